"""Dialogues from the manifest + HDF5 feature files, batches in training order and the training-time feature
masking (the Dialogue and Batch types and their padding are the model's: ercpipe.model.batch).

Replaces the official 7-tuple pickle (spec 1.1): speakers come from the manifest's `speaker_slot`, labels
are ids in the dataset's class order (summary.json "classes"), features come from ercpipe.io.features
with the manifest's utterance ids checked.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ercpipe.errors import ErcpipeError
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.labels import MODALITIES
from ercpipe.model.batch import Batch, Dialogue, collate

logger = logging.getLogger(__name__)


class DataError(ErcpipeError, ValueError):
    """The manifest, summary or feature files cannot be used for training; the message says what to do."""


@dataclass
class DialogueData:
    dialogues: list[Dialogue]
    classes: list[str]
    modalities: tuple[str, ...]
    dims: dict[str, int]
    n_speakers: int
    source: str = ""
    absent_counts: dict[str, int] = field(default_factory=dict)
    # modality -> how its feature file was made (extractor, model, settings, encoder_dir), from the file's
    # attributes; checkpoints keep it so inference on a new conversation runs the same extractors.
    feature_sources: dict[str, dict] = field(default_factory=dict)
    # speaker name -> slot when the manifest gives every speaker one slot throughout and that is not simply the
    # order of first appearance (IEMOCAP: 0 = the male, 1 = the female actor); None otherwise. Checkpoints keep
    # it, so that a new conversation by the same speakers gets the slots training used.
    speaker_slots: dict[str, int] | None = None
    # Slots of the training split when fewer than n_speakers (ModelSpec.trained_speakers); None otherwise.
    trained_speakers: int | None = None

    def split(self, *names: str) -> list[Dialogue]:
        return [d for d in self.dialogues if d.split in names]

    def coverage(self) -> dict:
        """Per split and modality, how many utterances have features: {split: {modality: {present, utterances}}}
        (metrics.json's `feature_coverage`)."""
        out: dict = {}
        for split in manifest_io.SPLITS:
            dialogues = self.split(split)
            if dialogues:
                total = sum(len(d.utterance_ids) for d in dialogues)
                out[split] = {m: {"present": sum(int(d.present[m].sum()) for d in dialogues), "utterances": total}
                              for m in self.modalities}
        return out

    def labels(self, *names: str) -> np.ndarray:
        parts = [d.labels.numpy() for d in self.split(*names)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def content_digest(fs: feature_io.FeatureSet) -> str:
    """sha256 of a feature set's ids, values and present mask (what training read; the file's own
    attributes, e.g. its creation time, do not count)."""
    h = hashlib.sha256()
    h.update("\n".join(fs.utterance_ids).encode())
    h.update(np.ascontiguousarray(fs.features, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(fs.present, dtype=bool).tobytes())
    return h.hexdigest()


def read_classes(manifest_path: Path) -> list[str]:
    summary = Path(manifest_path).parent / "summary.json"
    if not summary.exists():
        raise DataError(f"{summary} does not exist, so the dataset's class list is unknown; run the manifest "
                        "rule (it writes summary.json next to the manifest) or pass classes=...")
    classes = json.loads(summary.read_text()).get("classes")
    if not classes:
        raise DataError(f"{summary} has no 'classes' list; rebuild it with the manifest rule")
    return [str(c) for c in classes]


def load_dialogues(manifest_path: str | Path, feature_paths: dict[str, str | Path], modalities: Sequence[str], *,
                   classes: Sequence[str] | None = None, n_speakers: int | None = None,
                   allow_unlabelled: bool = False,
                   expected: Mapping[str, feature_io.Expectation] | None = None, training: bool = True) -> DialogueData:
    """Read the manifest and the feature files of `modalities`, grouped by dialogue in manifest order.

    classes: label order (default: summary.json next to the manifest). n_speakers: number of speaker
    slots S (default: max slot + 1 over the whole dataset; a configured value must cover every slot).
    allow_unlabelled: map an empty label to -1 (inference on new conversations) instead of failing.
    expected: per modality, what its file must be (settings hash, width; ercpipe.io.features.expect for
    a config setting, ercpipe.model.checkpoint.feature_expectations for a checkpoint). Every file's
    utterance ids must be the manifest's, in its order. All files are checked before anything fails;
    the FeatureFileError names each file that does not match, how, and the fix. training: warn about classes
    and speaker slots that training cannot learn, and about a split without any features of a modality (False
    for inference, where they say nothing: predictions list each utterance's absent modalities).
    """
    manifest_path = Path(manifest_path)
    modalities = tuple(modalities)
    bad = [m for m in modalities if m not in MODALITIES]
    if bad or not modalities:
        raise DataError(f"modalities must be a non-empty subset of {list(MODALITIES)}, got {list(modalities)}")
    missing_paths = [m for m in modalities if m not in feature_paths]
    if missing_paths:
        raise DataError(f"no feature file given for modality {missing_paths} (feature_paths has "
                        f"{sorted(feature_paths)}); the experiment uses {list(modalities)}")
    classes = list(classes) if classes is not None else read_classes(manifest_path)
    df = manifest_io.read(manifest_path)
    checked = df.assign(label=df["label"].mask(df["label"] == "", classes[0])) if allow_unlabelled else df
    manifest_io.validate(checked, classes, source=str(manifest_path))
    ids = df["utterance_id"].tolist()

    matrices: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    absent_counts: dict[str, int] = {}
    sources: dict[str, dict] = {}
    problems: list[str] = []
    for m in modalities:
        fs = feature_io.read(feature_paths[m])
        found = fs.attrs.get("modality")
        if found and found != m:
            raise DataError(f"{feature_paths[m]} holds {found!r} features but was given as the {m!r} file")
        want = (expected or {}).get(m)
        if want is None:
            want = feature_io.Expectation(source=f"the manifest {manifest_path}", ids_from="the manifest")
        else:
            want = dataclasses.replace(want, ids_from=f"the manifest {manifest_path}")
        want = dataclasses.replace(want, modality=m, ids=ids)
        problem = feature_io.mismatch_message(feature_paths[m], fs, want)
        if problem:
            problems.append(problem)
            continue
        sources[m] = {k: fs.attrs.get(k) for k in ("extractor", "model", "settings", "encoder_dir", "setting_hash")}
        sources[m].update(path=str(feature_paths[m]), dim=fs.dim, content_sha256=content_digest(fs))
        # What the features were made with, for predict to check it has the same: the face embedder's file and
        # digest, the text model's files' digest or hub commit.
        for key in ("weights_source", "model_sha256", "model_commit"):
            if fs.attrs.get(key):
                sources[m][key] = fs.attrs[key]
        feats = np.ascontiguousarray(fs.features, dtype=np.float32)
        absent = ~fs.present
        # An absent modality row is zeros by contract; enforce it so a stale value can never leak in.
        feats[absent] = 0.0
        matrices[m], present[m] = feats, fs.present.copy()
        absent_counts[m] = int(absent.sum())
        if absent_counts[m]:
            logger.info("%s: %d of %d utterances have no %s features (zeros, present=False)",
                        feature_paths[m], absent_counts[m], len(ids), m)
    if problems:
        raise feature_io.FeatureFileError("\n".join(problems))
    for split in manifest_io.SPLITS if training else ():  # predict reports absent modalities per utterance
        rows = (df["split"] == split).to_numpy()
        for m in modalities:
            if rows.any() and not present[m][rows].any():
                logger.warning("%s: none of the %d %s utterances has %s features (all zeros): the model sees no %s "
                               "there; see the dataset's issues.tsv for why (e.g. missing media), or leave %s out "
                               "of the experiment", feature_paths[m], int(rows.sum()), split, m, m, m)

    class_index = {c: i for i, c in enumerate(classes)}
    labels = np.array([class_index.get(lab, -1) for lab in df["label"]], dtype=np.int64)
    slots = df["speaker_slot"].to_numpy(dtype=np.int64)
    needed = int(slots.max()) + 1 if len(slots) else 1
    trained_speakers = None
    if n_speakers is None:
        n_speakers = needed
        # The model draws initial rows for these slots only (ModelSpec.trained_speakers): a test dialogue with
        # more speakers than any training one must not change the weights training starts from.
        train_rows = (df["split"] == "train").to_numpy()
        if train_rows.any() and int(slots[train_rows].max()) + 1 < needed:
            trained_speakers = int(slots[train_rows].max()) + 1
    elif n_speakers < needed:
        row = int(np.argmax(slots))
        raise DataError(f"{manifest_path}: utterance {ids[row]} has speaker_slot {int(slots[row])}, but the "
                        f"configuration allows {n_speakers} speaker slots (model.n_speakers); raise it to "
                        f">= {needed} or leave it null")

    if training:
        _warn_untrained(df, labels, slots, classes, manifest_path)

    dialogues: list[Dialogue] = []
    positions = np.arange(len(df))
    for dialogue_id, rows in df.groupby("dialogue_id", sort=False).indices.items():
        rows = positions[rows]
        dialogues.append(Dialogue(
            dialogue_id=str(dialogue_id), split=str(df["split"].iat[rows[0]]),
            utterance_ids=[ids[i] for i in rows],
            features={m: torch.from_numpy(matrices[m][rows]) for m in modalities},
            present={m: torch.from_numpy(present[m][rows]) for m in modalities},
            labels=torch.from_numpy(labels[rows]), speakers=torch.from_numpy(slots[rows])))
    dims = {m: int(matrices[m].shape[1]) for m in modalities}
    logger.info("loaded %d dialogues (%d utterances) from %s: %s; dims %s; %d speaker slots", len(dialogues),
                len(df), manifest_path, {s: len([d for d in dialogues if d.split == s]) for s in manifest_io.SPLITS},
                dims, n_speakers)
    return DialogueData(dialogues, classes, modalities, dims, n_speakers, str(manifest_path), absent_counts, sources,
                        fixed_speaker_slots(df), trained_speakers)


def _warn_untrained(df: pd.DataFrame, labels: np.ndarray, slots: np.ndarray, classes: Sequence[str],
                    manifest_path) -> None:
    """Say what training cannot learn: a class without a training utterance (never predicted for a reason), one
    without a validation utterance (model selection does not see it), and a speaker slot used only outside
    training (its embedding stays as initialised, and is added to those utterances)."""
    split = df["split"].to_numpy()
    train, valid = labels[split == "train"], labels[split == "valid"]
    for where, seen in (("training", train), ("validation", valid)):
        if where == "validation" and not len(valid):
            continue
        present = set(seen.tolist())
        missing = [c for i, c in enumerate(classes) if i not in present]
        if missing:
            logger.warning("%s: class(es) %s have no %s utterance%s", manifest_path, missing, where,
                           "; the model cannot learn them" if where == "training" else
                           "; model selection does not see them")
    unseen = sorted(set(slots[split != "train"].tolist()) - set(slots[split == "train"].tolist()))
    if unseen:
        dialogues = sorted(set(df.loc[np.isin(slots, unseen) & (split != "train"), "dialogue_id"]))
        logger.warning("%s: speaker slot(s) %s occur only outside training (dialogues %s%s): their speaker "
                       "embeddings are never trained; a dialogue with that many speakers in training, or fewer "
                       "speakers there, avoids it", manifest_path, unseen, dialogues[:5],
                       f" and {len(dialogues) - 5} more" if len(dialogues) > 5 else "")


def fixed_speaker_slots(df: pd.DataFrame) -> dict[str, int] | None:
    """The manifest's speaker -> slot table when it is one fixed table that first appearance would not give
    (DialogueData.speaker_slots), else None."""
    pairs = df[["speaker", "speaker_slot"]].drop_duplicates()
    if pairs.empty or pairs["speaker"].duplicated().any() or (pairs["speaker"] == "").any():
        return None
    first = df.groupby("dialogue_id", sort=False)["speaker"].transform(
        lambda names: names.map({n: i for i, n in enumerate(dict.fromkeys(names))}))
    if (first.to_numpy() == df["speaker_slot"].to_numpy()).all():
        return None
    return {str(name): int(slot) for name, slot in zip(pairs["speaker"], pairs["speaker_slot"])}


# A dimension whose training values vary less than this is constant: it is centered, not scaled.
MIN_STD = 1e-6


def standardization(dialogues: Sequence[Dialogue], modalities: Sequence[str],
                    feature_paths: Mapping[str, str | Path] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Per-dimension mean and std of each modality over the present utterances of `dialogues`.

    Called with the training dialogues only, so no statistic comes from validation or test data. Raw
    openSMILE functionals span five orders of magnitude (IS10: |x| up to ~5000 next to values below 1),
    which a bias-free linear projection cannot absorb; standardizing puts every modality on one scale.
    ercpipe.model.batch.standardize applies the statistics (here and, from the checkpoint, at prediction).
    `feature_paths` (modality -> file) only make an error name the file and why its utterances lack features.
    """
    stats = {}
    for m in modalities:
        rows = [d.features[m][d.present[m]] for d in dialogues]
        x = torch.cat(rows).double() if rows else torch.zeros(0)
        if len(x) < 2:
            path = (feature_paths or {}).get(m)
            n = sum(len(d.utterance_ids) for d in dialogues)
            raise DataError(f"{f'{path}: ' if path else ''}cannot standardize {m} features: {len(x)} of the {n} "
                            f"training utterances have them{_absent_reasons(path)}. The dataset's issues.tsv and "
                            f"the report's coverage page say why for each utterance; fix the media or the "
                            f"extractor setting (faces: min_face_size, thresholds), or leave {m} out of the "
                            "experiment's features")
        std = x.std(dim=0)
        stats[m] = {"mean": x.mean(dim=0).float(), "std": torch.where(std < MIN_STD, 1.0, std).float()}
    return stats


def _absent_reasons(path) -> str:
    """' (reasons the file records for its utterances without features: {reason: count})', or '' if none."""
    try:
        recorded = feature_io.read(path).attrs.get("absent") if path else None
        recorded = json.loads(recorded) if isinstance(recorded, str) else recorded
    except (OSError, ValueError, ErcpipeError):
        return ""
    if not recorded:
        return ""
    counts = feature_io.absent_reason_counts(recorded)
    return f" (the file's reasons, all splits: {dict(counts.most_common())})"


def batches(dialogues: Sequence[Dialogue], batch_size: int, shuffle: bool) -> Iterator[Batch]:
    """Batches in order, or in a fresh random order (global torch RNG) when shuffling; last batch kept."""
    order = torch.randperm(len(dialogues)).tolist() if shuffle else list(range(len(dialogues)))
    for start in range(0, len(order), batch_size):
        yield collate([dialogues[i] for i in order[start:start + batch_size]])


def mask_feature_dims(batch: Batch, ratio: float) -> Batch:
    """Training augmentation (spec 1.6, O13): per dialogue and modality, zero each feature dimension with
    probability `ratio` for all utterances of that dialogue; no rescaling. Draws on the CPU generator, one
    [dialogues, dim] draw per modality in the order text, visual, audio, so runs are reproducible on any device."""
    if ratio <= 0:
        return batch
    feats = dict(batch.features)
    for m in ("text", "visual", "audio"):
        if m in feats:
            b, _, dim = feats[m].shape
            keep = (torch.rand(b, dim) >= ratio).to(feats[m].device, feats[m].dtype)
            feats[m] = feats[m] * keep[:, None, :]
    return Batch(batch.dialogue_ids, batch.utterance_ids, feats, batch.present, batch.mask, batch.labels,
                 batch.speakers)
