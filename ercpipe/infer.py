"""Inference with a trained checkpoint: on feature files the pipeline made, or on a new raw conversation.

A checkpoint (`results/{dataset}/{experiment}/seed{n}/model.pt`) records, per modality, how its training
features were made (extractor, model, settings, fine-tuned encoder directory). `predict_conversation`
runs exactly those extractors on a new conversation, so its features match the training features; the
checkpoint's training-split standardization is then applied by `ercpipe.model.inference.predict`. Only the
backbone runs (no anchors, no training data needed; spec 2.14). Checkpoints load with weights_only.

Conversation file: a CSV (or .tsv) with one row per utterance in spoken order and a header. Columns:

    speaker        required (may be empty); a `speaker_slot` column gives the slots; without it a
                   speaker the training data gave one fixed slot keeps it (the checkpoint's table; IEMOCAP:
                   0 = the male, 1 = the female actor; a new name ending in _F / _M, or F / M alone, takes
                   that letter's slot), else slots follow first appearance per dialogue. A model whose faces
                   were picked by side (IEMOCAP) takes the face from that letter: other names are refused
    text           the transcript (needed by models with a text branch)
    audio_path, audio_start, audio_end, video_path, video_start, video_end
                   media (paths relative to the CSV's folder); times in seconds, empty = whole file
    utterance_id, dialogue_id, label   optional; label (one of the model's classes) adds a `label`
                   column to the output for comparison; without a dialogue_id the file is one dialogue named
                   after the file, without an utterance_id a row is {dialogue_id}_u000, _u001 ... in its dialogue

The file is read as the bring-your-own CSV reader reads a manifest (docs/manifest.md: encodings, quoting; a
row with an unquoted comma is an error naming its line, never shifted columns). A model that reads text
needs the `text` column; a dialogue with more speakers than the model's speaker slots is refused.

Media problems follow the pipeline's rules: a missing or broken file gives that modality zeros and a
`present = False` row, reported in the log and in the output: `flags` (defects the reader found) and
`absent` (the modalities the model saw as zeros).
"""
from __future__ import annotations

import contextlib
import csv
import itertools
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import pandas as pd

from ercpipe.errors import ErcpipeError
from ercpipe.io import manifest as manifest_io
from ercpipe.io.atomic import atomic_path

logger = logging.getLogger(__name__)

OPTIONAL_COLUMNS = ("utterance_id", "dialogue_id", "utterance_index", "label", "text", "speaker_slot", "audio_path",
                    "audio_start", "audio_end", "video_path", "video_start", "video_end")
KEY_COLUMNS = ("utterance_id", "dialogue_id", "label", "speaker_slot")  # cells the reader strips and normalises


class InferenceError(ErcpipeError, ValueError):
    """The checkpoint, the features or the conversation cannot be used; the message says what to do."""


def _load(checkpoint: str | Path, device: str):
    """(model, classes, amp): amp is the run's train.amp, which its evaluation (metrics.json, predictions.tsv)
    ran under, so that predictions here are those (fp16 autocast on a GPU gives probabilities that differ from
    fp32's in the fifth digit, enough to flip a near tie)."""
    from ercpipe.model.checkpoint import load_model

    model, config, classes = load_model(checkpoint, device)
    return model, classes, (config.get("train") or {}).get("amp", "off")


def checkpoint_files(checkpoint: str | Path, seed: int | None = None) -> list[Path]:
    """The model.pt files a --checkpoint names: a file itself; a run's seed folder; an experiment's results folder
    (every seed's run, or `seed`'s); a selection's results folder (its chosen experiment's runs, or for a chosen
    ensemble every member's runs of the seed(s)). Their predictions are averaged (`predict_features`)."""
    path = Path(checkpoint)
    if path.is_file() or (path / "model.pt").is_file():
        if seed is not None:
            raise InferenceError(f"{path} is one run; a seed is chosen among the runs of an experiment's or a "
                                 "selection's results folder (results/{dataset}/{name})")
        return [path if path.is_file() else path / "model.pt"]
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise InferenceError(f"{path} is neither a model.pt nor a folder holding one or a summary.json; give a run's "
                             "model.pt (results/{dataset}/{experiment}/seed{n}/model.pt), its seed folder, or an "
                             "experiment's or selection's results folder")
    summary = _results_summary(summary_path)
    selection = summary.get("selection") or {}
    chosen = selection.get("chosen")
    if chosen in (selection.get("ensembles") or {}):
        entry = selection["ensembles"][chosen]
        # (a selection written before it recorded them: its members are its siblings)
        paths = entry.get("summaries") or [str((path.parent / name / "summary.json").resolve())
                                           for name in entry["members"]]
        # The runs the selection averaged, as it recorded them; a member's own summary.json is written again when
        # one of its seeds is re-trained, and would vouch for the new run (before they were recorded: that file).
        recorded = entry.get("member_runs") or {}
        members = [(name, _project_path(member, summary_path), recorded.get(name))
                   for name, member in zip(entry["members"], paths)]
    else:
        members = [(chosen or path.name, summary_path, None)]
    files = []
    for name, member_path, member in members:
        if member is not None:
            member_path = summary_path  # what the runs must still be is the selection's record
        else:
            member = summary if member_path == summary_path else _results_summary(member_path)
        seeds = list(member["seeds"])
        if seed is not None and seed not in seeds:
            raise InferenceError(f"{summary_path}: {name} ran seeds {seeds}, not {seed}")
        digests = member.get("run_metrics_sha256") or [None] * len(seeds)  # (absent before they were recorded)
        for s, run, digest in zip(seeds, member["runs"], digests):
            if seed is not None and s != seed:
                continue
            folder = _project_path(run, member_path)
            _check_same_training(folder, digest, name, member_path)
            files.append(folder / "model.pt")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InferenceError(f"{summary_path} names run(s) without a model.pt: {missing[:3]}; run the workflow for "
                             "them again, or give one run's model.pt")
    return files


def _check_same_training(run: Path, digest: str | None, name: str, summary_path: Path) -> None:
    """A run a summary names must still be the training it summarised (its metrics.json's digest, recorded by the
    aggregation): a seed trained again since (a killed re-run, a target of that experiment alone, changed settings)
    was used silently in place of the one the selection had ranked."""
    from ercpipe.io.digest import file_digest

    metrics = run / "metrics.json"
    if digest and metrics.is_file() and file_digest(metrics, len(digest)) != digest:
        raise InferenceError(f"{run} was trained again after {summary_path} was written, so it is not the run "
                             f"{name}'s results describe (its metrics.json changed); run Snakemake again to bring "
                             f"{summary_path.parent} up to date, or give that run's model.pt itself")


def _results_summary(path: Path) -> dict:
    """An experiment's or selection's summary.json (results/{dataset}/{name}/summary.json): its runs and seeds. A
    dataset's summary.json (features/{dataset}/, an import-pickle folder) or a damaged file is named as such."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InferenceError(f"{path} cannot be read as JSON ({err}); it is damaged or not a summary.json the "
                             "workflow wrote: run the workflow for that experiment again") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("seeds"), list) or \
            not isinstance(summary.get("runs"), list):
        kind = ("a dataset's summary (features/{dataset}/ or an import-pickle folder), not a results folder's"
                if isinstance(summary, dict) and "utterances" in summary else "not an experiment's or selection's")
        raise InferenceError(f"{path} is {kind}: --checkpoint takes a run's model.pt "
                             "(results/{dataset}/{experiment}/seed{n}/model.pt), its seed folder, or an experiment's "
                             "or selection's results folder (results/{dataset}/{name})")
    return summary


def _project_path(recorded: str, summary_file: Path) -> Path:
    """A path a summary records, relative to the project it ran in: under the project that holds `summary_file`
    (results/{dataset}/{name}/summary.json), whatever folder predict runs from (another project's results/ there
    must not be taken); as recorded when the summary is not in such a place (a copied summary)."""
    path = Path(recorded)
    if path.is_absolute():
        return path
    project = _results_project(summary_file, 2)
    if project is not None and (project / path).exists():
        return project / path
    return path


def _results_project(file: str | Path, depth: int) -> Path | None:
    """The pipeline folder holding `file` when the file's `depth`-th parent is its results/ folder, else None. The
    path as given is looked at before the one its links resolve to: results/ may be a link to scratch storage, and
    the project is where the link is."""
    for path in (Path(os.path.abspath(file)), Path(file).resolve()):
        parents = path.parents
        if len(parents) > depth + 1 and parents[depth].name == "results":
            return parents[depth + 1]
    return None


def _averaged(frames: list[pd.DataFrame], names: list[str]) -> pd.DataFrame:
    """One model's predictions as they are; several models' with their class probabilities averaged (the
    selection's ensembles are made the same way: ercpipe.train.ensemble)."""
    if len(frames) == 1:
        return frames[0]
    from ercpipe.train.ensemble import mean_probabilities

    classes = [c[len("prob_"):] for c in frames[0].columns if c.startswith("prob_")]
    logger.info("mean class probabilities of %d models: %s", len(frames), ", ".join(names))
    return mean_probabilities(dict(zip(names, frames)), classes)


def predict_features(checkpoint: str | Path, manifest_path: str | Path, feature_paths: dict[str, str | Path],
                     out_path: str | Path | None = None, splits: Sequence[str] | None = None,
                     device: str = "auto", batch_size: int = 32, seed: int | None = None) -> pd.DataFrame:
    """Predictions for the utterances of `manifest_path` (optionally only `splits`) from feature files, by the
    model(s) `checkpoint` names (checkpoint_files; several: their mean class probabilities)."""
    files = checkpoint_files(checkpoint, seed)
    unread: list[set[str]] = []  # per model, the modalities given that it does not read
    frame = _averaged([_predict_features_one(f, manifest_path, feature_paths, splits, device, batch_size,
                                             unread=unread) for f in files], [str(f) for f in files])
    unused = sorted(set.intersection(*unread)) if unread else []
    if unused:  # a file an ensemble's other member reads is used
        logger.warning("%s: the %s feature file(s) given are read by none of its model(s)", checkpoint, unused)
    if out_path is not None:
        write_predictions(frame, out_path)
    return frame


def _predict_features_one(checkpoint: Path, manifest_path: str | Path, feature_paths: dict[str, str | Path],
                          splits: Sequence[str] | None, device: str, batch_size: int,
                          loaded: tuple | None = None, unread: list[set[str]] | None = None) -> pd.DataFrame:
    """One model's predictions; `loaded`: what _load gave for it already; `unread`: gets the modalities of
    `feature_paths` this model does not read."""
    from ercpipe.model.checkpoint import feature_expectations
    from ercpipe.model.inference import predict
    from ercpipe.train.data import load_dialogues

    model, classes, amp = loaded or _load(checkpoint, device)
    modalities = model.spec.modalities
    missing = [m for m in modalities if m not in feature_paths]
    unused = [m for m in feature_paths if m not in modalities]
    if missing:
        raise InferenceError(f"{checkpoint} was trained on {list(modalities)}; give a feature file for {missing}" +
                             (f" (the {unused} file(s) given are not read by this model)" if unused else ""))
    if unread is not None:
        unread.append(set(unused))
    manifest = manifest_io.read(manifest_path).set_index("utterance_id")
    unknown = sorted(set(manifest["label"]) - set(classes) - {""})
    if unknown:  # the classes are the checkpoint's: a label outside them means a model of another dataset
        raise InferenceError(f"{manifest_path}: label(s) {unknown[:5]} are not among the classes {list(classes)} that "
                             f"{checkpoint} was trained on; use a checkpoint trained on this dataset's classes, or "
                             "predict without labels")
    # Each file must have the width and setting the checkpoint was trained on, and the manifest's ids
    # (one FeatureFileError naming every file that does not, and the fix).
    data = load_dialogues(manifest_path, feature_paths, modalities, classes=classes,
                          n_speakers=model.spec.n_speakers, allow_unlabelled=True,
                          expected=feature_expectations(model, checkpoint), training=False)
    dialogues = data.split(*splits) if splits else data.dialogues
    if not dialogues:
        raise InferenceError(f"{manifest_path} has no dialogues in splits {list(splits or [])}")
    frame = predict(model, dialogues, batch_size=batch_size, amp=amp)
    frame["split"] = frame["utterance_id"].map(manifest["split"])  # as the pipeline's predictions.tsv has it
    frame["flags"] = frame["utterance_id"].map(manifest["flags"])
    # Who the model took each utterance's speaker to be (the slot is what it reads of the speaker).
    frame["speaker"] = frame["utterance_id"].map(manifest["speaker"])
    frame["speaker_slot"] = frame["utterance_id"].map(manifest["speaker_slot"])
    # Which modalities the model saw as zeros (no face found, no audio, empty text ...).
    absent = {u: ";".join(m for m in modalities if not bool(d.present[m][i]))
              for d in dialogues for i, u in enumerate(d.utterance_ids)}
    frame["absent"] = frame["utterance_id"].map(absent)
    return frame


class Conversation(NamedTuple):
    rows: pd.DataFrame  # bring-your-own manifest rows, split test
    labelled: bool  # some row has a label
    lines: list[int]  # each row's line in the file
    has_text: bool  # the file has a text column
    undecodable: list[bool]  # each row's line was not UTF-8 (read as cp1252; the staged copy is UTF-8)


# The letter that ends a speaker's name as a word of its own: Ses01_F, F, "Jim M" (IEMOCAP's actors), not "Pam".
SIDE_LETTER = re.compile(r"(?:^|[_\s.-])([A-Z])$")
IEMOCAP_DIALOGUE = re.compile(r"^Ses\d\d[FM]_")


def read_conversation(path: str | Path, classes: Sequence[str]) -> Conversation:
    """The conversation file as bring-your-own manifest rows. Read as the CSV reader reads (encodings,
    quoting, a row with more fields than the header: an error naming the line)."""
    from ercpipe.datasets.csv_manifest import key_cell, read_csv_records, speaker_cell
    from ercpipe.io.manifest import ManifestError

    path = Path(path)
    if path.is_dir():
        raise InferenceError(f"conversation file {path} is a folder; give a CSV (or .tsv) file of the conversation")
    if not path.is_file():
        raise InferenceError(f"conversation file {path} does not exist")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        records = read_csv_records(path, ("speaker",), delimiter)
    except ManifestError as err:
        raise InferenceError(f"{err} (conversation format: ercpipe.infer)") from None
    header = set(records[0].values if records else ())
    unknown = sorted(header - set(OPTIONAL_COLUMNS) - {"speaker"})
    for column in unknown:  # "Dialogue_ID" was ignored: two conversations were predicted as one, labels dropped
        meant = re.sub(r"[\s-]+", "_", column.strip()).lower()
        if meant in OPTIONAL_COLUMNS and meant not in header:
            raise InferenceError(f"{path}: column {column!r} is not read (column names are lower case); rename it "
                                 f"to {meant!r}")
    if unknown:
        logger.info("%s: ignoring column(s) %s", path, unknown)
    if not records:
        raise InferenceError(f"{path} has a header but no utterances")
    rows = pd.DataFrame([{c: r.values.get(c, "") for c in ("speaker", *OPTIONAL_COLUMNS)} for r in records])
    # Ids, labels and speakers as the reader will key them: its manifest is matched back to these rows, and slots
    # and face sides are looked up by these names ("Ses05_F " from a spreadsheet got the other actor's slot).
    for column in KEY_COLUMNS:
        rows[column] = rows[column].map(key_cell)
    rows["speaker"] = rows["speaker"].map(speaker_cell)
    rows["dialogue_id"] = rows["dialogue_id"].where(rows["dialogue_id"] != "", key_cell(path.stem))
    numbers = rows.groupby("dialogue_id", sort=False).cumcount().map(lambda n: f"u{n:03d}")  # within its dialogue
    rows["utterance_id"] = rows["utterance_id"].where(rows["utterance_id"] != "",
                                                     rows["dialogue_id"] + "_" + numbers)
    labelled = bool((rows["label"] != "").any())
    if labelled:
        for record, label in zip(records, rows["label"]):
            if label and label not in classes:
                spelt = [c for c in classes if c.lower() == label.lower()]
                raise InferenceError(f"{path}, line {record.line}: label {label!r} is not one of the model's classes "
                                     f"{list(classes)}" + (f" (it differs from {spelt[0]!r} only in case)" if spelt
                                                           else ""))
    rows["split"] = "test"
    return Conversation(rows, labelled, [r.line for r in records], "text" in records[0].values,
                        [r.fixed for r in records])


def _letter_slots(speaker_slots: dict[str, int] | None) -> dict[str, int]:
    """{letter: slot} when the training table gives every speaker the slot of the letter ending its name (IEMOCAP:
    Ses01_M -> 0, Ses03_F -> 1), so a new speaker ending in that letter takes that slot; else {}."""
    rule: dict[str, int] = {}
    for name, slot in (speaker_slots or {}).items():
        letter = SIDE_LETTER.search(name)
        if letter is None or rule.setdefault(letter.group(1), slot) != slot:
            return {}
    return rule


def _training_slots(conversation, rows: pd.DataFrame, speaker_slots: dict[str, int],
                    by_letter: dict[str, int]) -> pd.DataFrame:
    """Speaker slots for a file without a speaker_slot column, from a model trained with a fixed slot per speaker:
    a speaker in the training table keeps its slot, one whose name ends in a letter the table follows (IEMOCAP's
    M / F) takes that letter's; the others take, in each dialogue, the lowest slots the known speakers leave free,
    in order of first appearance (the known ones used to lose their slots as soon as one speaker was unknown)."""
    def fixed(name: str) -> int | None:
        if name in speaker_slots:
            return int(speaker_slots[name])
        letter = SIDE_LETTER.search(name)
        return by_letter.get(letter.group(1)) if by_letter and letter else None

    slots = {name: fixed(name) for name in rows["speaker"].unique()}
    known = sorted(name for name, slot in slots.items() if slot is not None)
    unknown = [name for name, slot in slots.items() if slot is None]
    if not known:
        example = ", ".join(f"{name}={slot}" for name, slot in list(speaker_slots.items())[:4])
        logger.warning("%s: the model was trained with a fixed slot per speaker (e.g. %s), which this file's "
                       "speakers are not in; their slots follow the order of first appearance in each dialogue. "
                       "Give a speaker_slot column to use training's convention", conversation, example)
        return rows
    assigned, shared = [], []
    for dialogue_id, dialogue in rows.groupby("dialogue_id", sort=False):
        here = {name: slots[name] for name in dialogue["speaker"].unique() if slots[name] is not None}
        if len(set(here.values())) < len(here):  # e.g. Ses01_M and Ses02_M: one slot, one speaker to the model
            shared.append(f"{dialogue_id}: " + ", ".join(sorted(here)))
        taken = set(here.values())
        free = (slot for slot in itertools.count() if slot not in taken)
        here.update({name: next(free) for name in dialogue["speaker"].unique() if name not in here})
        assigned.append(dialogue["speaker"].map(lambda name: str(here[name])))
    rows = rows.assign(speaker_slot=pd.concat(assigned).loc[rows.index])
    in_table = [name for name in known if name in speaker_slots]
    if in_table:
        logger.info("%s: speaker slots from the training data's table (%s)", conversation,
                    ", ".join(f"{name}={slots[name]}" for name in in_table))
    if len(in_table) < len(known):
        logger.info("%s: speaker slots by the letter ending each name, as in the training data (%s)", conversation,
                    ", ".join(f"{name}={slots[name]}" for name in known if name not in speaker_slots))
    if unknown:
        logger.warning("%s: speaker(s) %s are not in the training data's slot table; in each dialogue they take the "
                       "slots its known speakers leave free, in order of first appearance. Give a speaker_slot column "
                       "to choose", conversation, [name or "(empty)" for name in unknown[:5]])
    if shared:
        logger.warning("%s: speakers that the training data's table gives one slot are in one dialogue (%s); the model "
                       "takes them for one speaker. Give a speaker_slot column to tell them apart", conversation,
                       "; ".join(shared[:3]))
    return rows


def _check_side_letters(conversation, speakers, dialogues, face_selection: dict | None) -> None:
    """A model whose faces were picked by side (IEMOCAP: the F actor left, M right) takes each speaker's face from
    the letter that ends the speaker's name; a name that merely ends in such a letter ("Pam", "Rolf") got the other
    actor's face, silently. Names must end in the letter as a word of its own (Ses05_F, F)."""
    if not face_selection or face_selection.get("mode") != "side":
        return
    sides = face_selection.get("sides") or {"F": "by dialogue", "M": "by dialogue"}  # marked_actor: IEMOCAP's F/M
    if face_selection.get("marked_actor") is not None:
        unnamed = sorted({d for d in dialogues if not IEMOCAP_DIALOGUE.match(d)})
        if unnamed:
            raise InferenceError(f"{conversation}: the model picks faces by which actor wears the motion-capture "
                                 "markers, read from IEMOCAP dialogue ids; dialogue(s) "
                                 f"{unnamed[:5]} are not such ids: add a dialogue_id column naming each dialogue as "
                                 "IEMOCAP does, with the marked actor's letter (e.g. Ses01F_impro01 when the F actor "
                                 "wears them)")
    wrong = sorted(name for name in set(speakers) if not (SIDE_LETTER.search(name) and name[-1] in sides))
    if wrong:
        raise InferenceError(f"{conversation}: the model picks each speaker's face by the side of the frame "
                             f"({', '.join(f'{k}: {v}' for k, v in sides.items())}), from the letter ending the "
                             f"speaker's name; speaker(s) {wrong[:5]} do not end in one of {sorted(sides)} as a word "
                             "of its own: name them e.g. Ses05_F / Ses05_M, or F / M")


def conversation_manifest(conversation: str | Path, classes: Sequence[str], out_dir: Path,
                          modalities: Sequence[str] = (), n_speakers: int | None = None,
                          speaker_slots: dict[str, int] | None = None, face_selection: dict | None = None) -> Path:
    """Read the conversation through the pipeline's CSV reader (media checks, text repair) into a manifest.
    `modalities` / `n_speakers`: the model's, checked before any feature is extracted; only the modalities
    the model reads are looked for (no media flags for the others). `speaker_slots`: the training data's fixed
    speaker -> slot table (checkpoint), used when the file gives no speaker_slot: known speakers (by name, or by
    the letter ending the name when the table follows one, as IEMOCAP's M / F) keep their slots, the others take
    the free ones (_training_slots).
    `face_selection`: the visual features' face rule; a side rule needs speakers named by that letter."""
    from ercpipe.datasets.build import read_dataset
    from ercpipe.io.manifest import ManifestError

    rows, labelled, lines, has_text, undecodable = read_conversation(conversation, classes)
    _check_side_letters(conversation, rows["speaker"], rows["dialogue_id"], face_selection)
    by_letter = _letter_slots(speaker_slots)
    if "text" in modalities and not has_text:
        raise InferenceError(f"{conversation}: the model reads text, but the file has no 'text' column; add the "
                             "transcript of each utterance")
    given = rows["label"].copy()
    # The reader requires a label per row; unlabelled rows carry a placeholder that is blanked below.
    rows["label"] = rows["label"].where(rows["label"] != "", classes[0])
    if (rows["speaker_slot"] == "").all():
        rows = rows.drop(columns="speaker_slot")
        if speaker_slots:
            rows = _training_slots(conversation, rows, speaker_slots, by_letter)
    # One line per row in the staged copy (the reader collapses whitespace anyway), so that an error about
    # its line k + 2 can name the conversation file's own line.
    rows = rows.apply(lambda column: column.str.replace(r"[\r\n]+", " ", regex=True))
    staged = out_dir / "conversation.csv"
    rows.to_csv(staged, index=False, quoting=csv.QUOTE_MINIMAL)
    settings = {"format": "csv", "manifest": str(staged), "classes": list(classes),
                "root": str(Path(conversation).resolve().parent), "probe_media": True}
    if modalities:
        settings["modalities"] = list(modalities)

    def own_lines(text: str) -> str:
        """`text` naming the conversation file and its own line numbers instead of the staged copy's."""
        def own_line(number: re.Match) -> str:
            k = int(number.group(0))
            return str(lines[k - 2]) if 2 <= k < len(lines) + 2 else number.group(0)

        text = re.sub(re.escape(str(staged)) + r", line (\d+)",
                      lambda m: f"{conversation}, line {lines[int(m.group(1)) - 2]}", text)
        # The reader's "(lines 2, 3, 4)" of a dialogue: a cell over several lines of the file is one line here.
        text = re.sub(r"\(lines [0-9, ]+", lambda m: re.sub(r"[0-9]+", own_line, m.group(0)), text)
        return text.replace(str(staged), str(conversation))

    try:
        # A conversation need not show every class (and its placeholder labels are no labels at all).
        with _log_as_the_conversation(["datasets.csv_manifest"], own_lines, drop="of `classes` label no row"):
            frame, result = read_dataset("conversation", settings, media_required=False)
    except ManifestError as err:
        raise InferenceError(own_lines(str(err))) from None
    # What the reader found wrong with a row (a clip that cannot be read, times past the end of the file): the
    # prediction goes on without that modality, and the reason is said here rather than only as a flag.
    for issue in result.issues.issues:
        known = issue.line is not None and 2 <= issue.line < len(lines) + 2
        where = f"{conversation}, line {lines[issue.line - 2]}" if known else str(conversation)
        logger.warning("%s: utterance %s: %s%s", where, issue.utterance_id or "?", issue.reason,
                       f" ({own_lines(issue.detail)})" if issue.detail else "")
    if n_speakers is not None and len(frame) and int(frame["speaker_slot"].max()) >= n_speakers:
        worst = frame.loc[frame["speaker_slot"].idxmax()]
        if "speaker_slot" in rows:  # the file's own values: the slot is the fault, not the count of speakers
            line = lines[rows.index[rows["utterance_id"] == worst["utterance_id"]][0]]
            raise InferenceError(f"{conversation}, line {line}: speaker_slot {int(worst['speaker_slot'])} is not one "
                                 f"of the model's {n_speakers} speaker slots (0 to {n_speakers - 1}); give slots in "
                                 "that range")
        raise InferenceError(f"{conversation}: dialogue {worst['dialogue_id']} has {int(worst['speaker_slot']) + 1} "
                             f"speakers, but the model was trained with {n_speakers} speaker slots; split the "
                             "conversation, or give speaker_slot values below that")
    # The staged copy is UTF-8: a line of the file that was not (read as cp1252) is flagged as the CSV reader flags
    # it, and said.
    repaired = {uid: line for uid, line, fixed in zip(rows["utterance_id"], lines, undecodable) if fixed}
    unflagged = frame["utterance_id"].isin(repaired) & ~frame["flags"].map(
        lambda flags: manifest_io.has_flag(flags, "text_fixed"))
    frame.loc[unflagged, "flags"] = frame.loc[unflagged, "flags"].map(
        lambda flags: manifest_io.add_flag(flags, "text_fixed"))
    for uid in frame.loc[unflagged, "utterance_id"]:
        logger.warning("%s, line %d: utterance %s: not UTF-8, read as cp1252 (text_fixed); save the file as UTF-8",
                       conversation, repaired[uid], uid)
    frame["label"] = frame["utterance_id"].map(dict(zip(rows["utterance_id"], given)))
    manifest_path = out_dir / "manifest.tsv"
    manifest_io.write(frame, manifest_path)
    logger.info("conversation %s: %d utterances, %s labels", conversation, len(frame),
                "with" if labelled else "without")
    return manifest_path


@contextlib.contextmanager
def _log_as_the_conversation(modules: Sequence[str], rewrite: Callable[[str], str], drop: str | None = None):
    """While the block runs, the log records of the modules `modules` (ercpipe.<module>) that contain `drop` (a
    reader warning that means nothing for a conversation) are dropped, and the others pass through `rewrite` (the
    staged copy's path and lines become the user's file's: the copy is in a folder deleted when predict ends)."""
    targets = [logging.getLogger(f"ercpipe.{module}") for module in modules]

    def keep(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if drop is not None and drop in message:
            return False
        record.msg, record.args = rewrite(message), ()
        return True

    for target in targets:
        target.addFilter(keep)
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(keep)


# The modules whose log lines name the manifest they read: predict's is a staged copy of the conversation.
EXTRACTION_LOGGERS = ("datasets.media_prep", "features.audio", "features.text", "features.visual", "train.data",
                      "io.features")


def checkpoint_project(file: Path) -> Path | None:
    """The pipeline folder a run's model.pt belongs to (results/{dataset}/{experiment}/seed{n}/model.pt), or None
    for a model.pt elsewhere: paths its features recorded relative to that folder are found from anywhere."""
    return _results_project(file, 3)


def extract_conversation_features(manifest_path: Path, sources: dict[str, dict], modalities: Sequence[str],
                                  out_dir: Path, threads: int = 1, device: str = "auto",
                                  project: Path | None = None) -> dict[str, Path]:
    """Run the training features' extractors (from the checkpoint's `sources`) on the conversation. `project`:
    the pipeline folder the checkpoint belongs to (checkpoint_project), where the files the settings name by a
    relative path (a fine-tuned encoder, a local text model, face-embedding weights) are looked for first (then
    under the current folder), as the pipeline's jobs found them from that folder."""
    from ercpipe.features import ExtractionContext, extract_shard

    # Every model file is checked before any extraction: a wrong face-embedding file used to be found after the
    # audio of a long recording had been cut and its features computed.
    contexts = {}
    for m in modalities:
        source = sources.get(m) or {}
        settings = source.get("settings")
        if not settings or source.get("extractor") == "pickle":
            raise InferenceError(f"the checkpoint's {m} features were not made by an ercpipe extractor (they were "
                                 "imported, e.g. from a pickle), so they cannot be made for a new conversation; "
                                 "extract them the same way yourself and use predict_features")
        # What each extractor needs besides its setting, as the pipeline's rules give it.
        if m == "text":
            encoder_dir = _in_project(source.get("encoder_dir") or None, project, Path.is_dir)
            if encoder_dir and not Path(encoder_dir).is_dir():
                raise InferenceError(f"the text features were made with the fine-tuned encoder {encoder_dir}, which "
                                     f"does not exist here{f' nor under {project}' if project else ''}; run the "
                                     "pipeline again to re-create it")
            _check_text_model(settings.get("model"), project)
            _check_text_identity(settings.get("model"), encoder_dir, source, project)
            contexts[m] = settings, ExtractionContext(encoder_dir=encoder_dir, base_dir=project)
        elif m == "audio":
            contexts[m] = settings, None  # the utterances' WAVs, cut below
        else:  # the stored visual setting holds the dataset's face selection
            settings = dict(settings)
            context = ExtractionContext(face_selection=settings.pop("face_selection", None), base_dir=project)
            _check_visual_weights(settings.get("weights"), source.get("weights_source"), project)
            contexts[m] = settings, context
    paths = {}
    for m, (settings, context) in contexts.items():
        out = out_dir / f"{m}.h5"
        if m == "audio":
            from ercpipe.datasets.media_prep import write_utterance_audio

            wavs = out_dir / "audio"
            write_utterance_audio(manifest_path, 0, 1, wavs, threads=threads)
            context = ExtractionContext(audio_dir=wavs)
        extract_shard(m, manifest_path, settings, out, threads=threads, device=device, context=context)
        paths[m] = out
    return paths


def _in_project(recorded: str | None, project: Path | None, exists) -> str | None:
    """A path a setting recorded as the config wrote it: a relative one under the checkpoint's project when it is
    there (`exists`: Path.is_dir / Path.is_file), so that a file of the same name under the current folder, from
    another project, is not taken; otherwise as recorded. The extractors look it up the same way
    (ExtractionContext.base_dir); the setting itself keeps the recorded spelling, which its hash covers."""
    from ercpipe.features.interface import under_base

    return under_base(project, recorded, exists) if recorded else recorded


def _found(value: str, project: Path | None, exists, what: str) -> str:
    """`value` found under the project or the current folder (_in_project), or an InferenceError naming `what` (the
    setting it came from) and where it was looked for."""
    found = _in_project(value, project, exists)
    if exists(Path(found)):
        return found
    where = ("which does not exist" if Path(value).is_absolute() else
             f"which exists neither {f'under {project} nor ' if project else ''}under the current folder")
    raise InferenceError(f"the {what.format(value)}, {where}; copy it along with the checkpoint, or run predict from "
                         "the project folder")


def _check_text_model(model: str | None, project: Path | None) -> None:
    """A text `model` folder (a path, not a hub name) that is found nowhere is named before any extraction."""
    from ercpipe.config import text_model_is_path

    if isinstance(model, str) and text_model_is_path(model):
        _found(model, project, Path.is_dir, "text features were made with the model folder {} (features.text.*.model)")


def _check_text_identity(model: str, encoder_dir: str | None, source: dict, project: Path | None) -> None:
    """The text model predict would load is the one the features were made with, when the checkpoint recorded its
    files' digest or hub commit: another model saved under the same folder (or a hub cache moved on to a newer
    commit) gave other features than training's without an error."""
    recorded = {key: source.get(key) for key in ("model_sha256", "model_commit") if source.get(key)}
    if not recorded:  # made before the digest was recorded
        return
    from ercpipe.features.text_encoder import model_location, model_identity

    location = model_location(model, encoder_dir, project)
    here = model_identity(location)
    for key, value in recorded.items():
        if here[key] != value:
            what = "files' digest" if key == "model_sha256" else "hub commit"
            raise InferenceError(f"the text model {location} is not the one the model's text features were made with "
                                 f"({what} {value} recorded, {here[key] or 'none'} here); give predict that model "
                                 "(for a hub name: `hf download NAME --revision COMMIT`)")


def _check_visual_weights(weights: str | None, weights_source: str | None, project: Path | None) -> None:
    """The face embedder's `weights` file is there (under the project first), and, when the checkpoint recorded
    its digest (weights_source: "{path} (sha256 {digest})"), the same file: another one would give other features
    than training's without an error."""
    if weights in (None, "random"):
        return
    from ercpipe.io.digest import file_digest
    from ercpipe.io.features import feature_identity

    found = _found(weights, project, Path.is_file,
                   "visual features were made with the weights file {} (features.visual.*.weights)")
    recorded = feature_identity({"weights_source": weights_source}).get("weights_sha256")
    if recorded and file_digest(found, len(recorded)) != recorded:
        raise InferenceError(f"the weights file {found} is not the one the model's visual features were made with "
                             f"(sha256 {recorded} recorded, {file_digest(found, len(recorded))} here); give the "
                             "checkpoint the file it was trained with")


def predict_conversation(checkpoint: str | Path, conversation: str | Path, out_path: str | Path | None = None,
                         work_dir: str | Path | None = None, threads: int = 1, device: str = "auto",
                         seed: int | None = None) -> pd.DataFrame:
    """Per-utterance emotions of a new conversation (media + transcript); see the module docstring. Several
    models (checkpoint_files) each get the features their training used (extracted once per kind) and their
    class probabilities are averaged."""
    files = checkpoint_files(checkpoint, seed)
    extracted: dict[str, tuple[Path, dict, Callable[[str], str]]] = {}  # manifest, features, log rewrite
    with tempfile.TemporaryDirectory(prefix="ercpipe-infer-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        frames = []
        for file in files:
            loaded = _load(file, device)
            model, classes, _ = loaded
            # Models trained on the same features (seeds of one experiment) share one extraction.
            kind = json.dumps([model.feature_sources, list(model.spec.modalities), model.spec.n_speakers,
                               model.speaker_slots, list(classes)], sort_keys=True, default=str)
            if kind not in extracted:
                # The first kind keeps the folder layout a single model has always used (--work-dir).
                folder = work if not extracted else work / f"models{len(extracted) + 1}"
                folder.mkdir(parents=True, exist_ok=True)
                visual = (model.feature_sources.get("visual") or {}).get("settings") or {}
                manifest_path = conversation_manifest(conversation, classes, folder, model.spec.modalities,
                                                      model.spec.n_speakers, model.speaker_slots,
                                                      face_selection=visual.get("face_selection")
                                                      if "visual" in model.spec.modalities else None)
                as_given = _the_conversation(manifest_path, conversation, None if work_dir else work)
                with _log_as_the_conversation(EXTRACTION_LOGGERS, as_given):
                    extracted[kind] = manifest_path, extract_conversation_features(
                        manifest_path, model.feature_sources, model.spec.modalities, folder / "features",
                        threads=threads, device=device, project=checkpoint_project(file)), as_given
            manifest_path, feature_paths, as_given = extracted[kind]
            with _log_as_the_conversation(EXTRACTION_LOGGERS, as_given):
                frames.append(_predict_features_one(file, manifest_path, feature_paths, None, device, 32, loaded))
            del model, loaded  # one model in memory at a time
        frame = _averaged(frames, [str(f) for f in files])
        # Rows in the file's order (the manifest groups each dialogue's rows, so a file that interleaves
        # dialogues came back in another order than the user's rows).
        first_manifest = next(iter(extracted.values()))[0]
        order = pd.read_csv(first_manifest.parent / "conversation.csv", dtype=str, keep_default_na=False)
        frame = frame.set_index("utterance_id", drop=False).loc[order["utterance_id"]].reset_index(drop=True)
    if out_path is not None:
        write_predictions(frame, out_path)
    return frame


def _the_conversation(manifest_path: Path, conversation: str | Path, deleted: Path | None) -> Callable[[str], str]:
    """A log line's text with the staged manifest named as the user's conversation file, and a working folder that
    is `deleted` when predict ends as what it was."""
    def rewrite(text: str) -> str:
        text = text.replace(str(manifest_path), str(conversation))
        return text.replace(str(deleted), "(predict's temporary folder)") if deleted is not None else text
    return rewrite


def write_predictions(frame: pd.DataFrame, out_path: str | Path) -> None:
    """Tab-separated, or comma-separated under a .csv name (a spreadsheet opens it by its name)."""
    sep = "," if Path(out_path).suffix.lower() == ".csv" else "\t"
    with atomic_path(out_path) as tmp:
        frame.to_csv(tmp, sep=sep, index=False, lineterminator="\n", float_format="%.6g")


def format_predictions(frame: pd.DataFrame) -> str:
    """A readable table: utterance, prediction, its probability (and the label when there is one)."""
    probs = frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()
    table = pd.DataFrame({"utterance_id": frame["utterance_id"], "prediction": frame["prediction"],
                          "probability": probs.max(axis=1).round(3)})
    if (frame["label"] != "").any():
        table["label"] = frame["label"]
    for column in ("absent", "flags"):
        if column in frame and (frame[column].fillna("") != "").any():
            table[column] = frame[column]
    return table.to_string(index=False)


__all__ = ["InferenceError", "checkpoint_files", "format_predictions", "predict_conversation",
           "predict_features", "read_conversation", "write_predictions"]
