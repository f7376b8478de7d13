"""Anchor mining (beyond the paper): build an anchor image set from the corpus's own training faces.

For each class, the training utterances whose visual feature is closest (cosine) to the class's mean
training feature are taken in order of distance; the middle face crop of each becomes
out_dir/{class}/{utterance_id}.png. Only the TRAINING split is ever looked at (valid/test faces must not
leak into the anchors). Utterances without a usable face are skipped and listed in mined.tsv.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ercpipe.anchors.images import MINED_DIGEST, image_set_digest
from ercpipe.errors import ErcpipeError
from ercpipe.features.settings import face_selection_for
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.io.atomic import atomic_dir
from ercpipe.labels import canonical_emotion
from ercpipe.mining_setting import mining_settings

logger = logging.getLogger(__name__)

MINED_COLUMNS = ("class", "label", "rank", "utterance_id", "split", "distance", "status", "image")

CropFn = Callable[..., list]  # (video_path, start, end, speaker, settings, face_selection) -> [RGB uint8 crops]


class AnchorMiningError(ErcpipeError, ValueError):
    """Mining cannot produce a usable image set; the message names the class and what to do."""


def rank_training_utterances(manifest: pd.DataFrame, visual: feature_io.FeatureSet, label: str) -> pd.DataFrame:
    """Present training utterances of `label`, nearest (cosine) to their mean feature first.

    Columns: utterance_id, split, distance (1 - cosine), plus the manifest's media columns. Ties keep
    manifest order, so the choice is deterministic.
    """
    rows = manifest[(manifest["split"] == "train") & (manifest["label"] == label)]
    feats, present = visual.rows(rows["utterance_id"].tolist())
    rows, feats = rows[present], feats[present].astype(np.float64)
    if rows.empty:
        return rows.assign(distance=np.zeros(0))
    unit = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    mean = feats.mean(axis=0)
    mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
    ranked = rows.assign(distance=1.0 - unit @ mean)
    return ranked.sort_values("distance", kind="stable")


def _why_absent(manifest: pd.DataFrame, visual: feature_io.FeatureSet, label: str, candidates: pd.DataFrame) -> str:
    """' (of N; the others: {reason: count})': why the class's other training utterances have no visual feature,
    from the feature file's per-utterance reasons (no_face, missing_video, ...)."""
    train = manifest.loc[(manifest["split"] == "train") & (manifest["label"] == label), "utterance_id"]
    others = [u for u in train if u not in set(candidates["utterance_id"])]
    if not others:
        return ""
    reasons = visual.attrs.get("absent") or {}
    reasons = json.loads(reasons) if isinstance(reasons, str) else reasons
    counts = Counter(str(reasons.get(u, "absent")).split(":")[0].split(" ")[0] for u in others)
    return f" (of {len(train)}; the others: {', '.join(f'{n} {r}' for r, n in counts.most_common())})"


def _safe_file_name(utterance_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", utterance_id) + ".png"


def _time(value) -> float | None:
    return None if pd.isna(value) else float(value)


def _default_crop_fn(face_settings: dict) -> CropFn:
    from ercpipe.features.visual import build_detector, utterance_face_crops

    # One MTCNN for every utterance instead of one per call.
    return partial(utterance_face_crops, detector=build_detector(face_settings))


def mine_anchor_images(manifest_path: str | Path, visual_h5_path: str | Path, classes: Sequence[str], settings: dict,
                       out_dir: str | Path, face_settings: dict, face_selection: dict,
                       crop_fn: CropFn | None = None) -> None:
    """Write out_dir/{class}/{utterance_id}.png (the mined image set) and out_dir/mined.tsv, atomically.

    classes: the dataset's labels in label-id order; folders are named by canonical emotion name.
    crop_fn: face crops of one utterance; default ercpipe.features.visual.utterance_face_crops.
    """
    from PIL import Image

    from ercpipe.io.media import MediaError

    settings = mining_settings(settings)
    names = [canonical_emotion(c) for c in classes]
    if len(set(names)) != len(names):
        raise AnchorMiningError(f"classes {list(classes)} map to duplicate emotion folders {names}")
    manifest = manifest_io.read(manifest_path)
    visual = feature_io.read(visual_h5_path)
    crop_fn = crop_fn if crop_fn is not None else _default_crop_fn(face_settings)
    ranked = {}
    for label in classes:
        candidates = rank_training_utterances(manifest, visual, label)
        if len(candidates) < settings["min_per_class"]:
            raise AnchorMiningError(
                f"class {label!r} has {len(candidates)} training utterance(s) with a visual feature in "
                f"{visual_h5_path}, fewer than min_per_class = {settings['min_per_class']}"
                f"{_why_absent(manifest, visual, label, candidates)}; " +
                ("lower min_per_class or use" if len(candidates) else "use") + " a hand-made anchor image set")
        if len(candidates) < settings["per_class"]:
            logger.warning("class %s: only %d present training utterances for per_class = %d", label,
                           len(candidates), settings["per_class"])
        ranked[label] = candidates
    records = []
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for label, candidates in ranked.items():
            name = canonical_emotion(label)
            (tmp / name).mkdir()
            kept = 0
            progress = tqdm(candidates.itertuples(index=False), total=len(candidates), desc=f"mine {name}", unit="utt")
            for rank, row in enumerate(progress):
                if kept == settings["per_class"]:
                    break
                record = {"class": name, "label": label, "rank": rank, "utterance_id": row.utterance_id,
                          "split": row.split, "distance": float(row.distance), "status": "ok", "image": ""}
                try:
                    crops = crop_fn(row.video_path, _time(row.video_start), _time(row.video_end), row.speaker,
                                    face_settings, face_selection_for(face_selection, row.dialogue_id))
                except MediaError as err:
                    crops, record["status"] = [], f"media_error: {err}"
                if not crops:
                    record["status"] = record["status"] if record["status"] != "ok" else "no_face"
                    logger.info("class %s: skipping utterance %s (%s)", name, row.utterance_id, record["status"])
                else:
                    image = f"{name}/{_safe_file_name(row.utterance_id)}"
                    Image.fromarray(np.ascontiguousarray(crops[len(crops) // 2], dtype=np.uint8)).save(tmp / image)
                    record["image"] = image
                    kept += 1
                records.append(record)
            if kept < settings["min_per_class"]:
                raise AnchorMiningError(
                    f"class {label!r}: only {kept} of {len(candidates)} training utterances gave a face crop, fewer "
                    f"than min_per_class = {settings['min_per_class']}; check the face settings or the videos")
            logger.info("class %s: %d images mined from %d candidates tried", name, kept,
                        sum(r["class"] == name for r in records))
        pd.DataFrame(records, columns=list(MINED_COLUMNS)).to_csv(tmp / "mined.tsv", sep="\t", index=False,
                                                                 lineterminator="\n")
        (tmp / MINED_DIGEST).write_text(image_set_digest(tmp, classes, content=True) + "\n")
