"""An ensemble of finished experiments: the mean of their class probabilities, seed by seed.

Seed s of the ensemble averages the `prob_*` columns of every member's seed-s predictions.tsv (valid and
test rows, matched by split and utterance id) and predicts the class of highest mean probability; it is
scored like a trained run (ercpipe.train.metrics), and its seeds are summarized like an experiment's
(ercpipe.train.aggregation.summarize_runs). A selection adds it as one more candidate, ranked on dev like
the others. Its members were themselves the best on dev, so its dev score is chosen with a small
advantage; its test score is read only once, after the choice, as for every candidate.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ercpipe.errors import ErcpipeError
from ercpipe.train.aggregation import summarize_runs
from ercpipe.train.metrics import classification_metrics

logger = logging.getLogger(__name__)

KEY = ["split", "utterance_id"]


class EnsembleError(ErcpipeError, ValueError):
    """The members cannot be averaged; the message names the files and what differs."""


def read_predictions(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise EnsembleError(f"{path} does not exist; the run has not finished")
    # Text but for the probabilities: class names that look like numbers ("0"/"1", valence "1".."5", "True")
    # were read as numbers and matched no class name, so every utterance was dropped from the scores.
    frame = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    probabilities = [c for c in frame.columns if c.startswith("prob_")]
    frame[probabilities] = frame[probabilities].astype(np.float64)
    return frame


def mean_probabilities(frames: Mapping[str, pd.DataFrame], classes: Sequence[str]) -> pd.DataFrame:
    """The members' predictions averaged: the first member's rows (same order), prob_* = the members' mean and
    prediction = the class of highest mean probability. Every member must hold the same utterances and labels."""
    columns = [f"prob_{c}" for c in classes]
    names = list(frames)
    first = frames[names[0]]
    total = first[columns].to_numpy(dtype=np.float64)
    for name in names[1:]:
        other = frames[name]
        if sorted(map(tuple, other[KEY].to_numpy())) != sorted(map(tuple, first[KEY].to_numpy())):
            raise EnsembleError(f"members {names[0]} and {name} predicted different utterances; an ensemble needs "
                                "every member trained on the same dataset and splits")
        aligned = first[KEY].merge(other, on=KEY, how="left", validate="one_to_one")
        if not (aligned["label"].to_numpy() == first["label"].to_numpy()).all():
            raise EnsembleError(f"members {names[0]} and {name} disagree on labels; were they trained on the same "
                                "manifest?")
        missing = [c for c in columns if c not in aligned]
        if missing:
            raise EnsembleError(f"member {name} has no columns {missing}; the members predict different classes")
        total += aligned[columns].to_numpy(dtype=np.float64)
    out = first.copy()
    mean = total / len(names)
    out[columns] = mean
    out["prediction"] = [classes[i] for i in mean.argmax(axis=1)]
    return out


def prediction_paths(members: Mapping[str, dict], seed: int) -> list[Path]:
    """The predictions.tsv of each member's run of `seed`."""
    return [Path(summary["runs"][summary["seeds"].index(seed)]) / "predictions.tsv" for summary in members.values()]


def ensemble_predictions(members: Mapping[str, dict], seed: int, predictions: dict | None = None) -> pd.DataFrame:
    """Seed `seed` of the ensemble of these experiments' summaries: mean_probabilities of their seed-`seed`
    predictions.tsv. `predictions`: a dict that keeps the files read (by path)."""
    predictions = {} if predictions is None else predictions
    frames = {}
    for name, path in zip(members, prediction_paths(members, seed)):
        if path not in predictions:
            predictions[path] = read_predictions(path)
        frames[name] = predictions[path]
    return mean_probabilities(frames, members[next(iter(members))]["classes"])


def ensemble_summary(members: Mapping[str, dict], predictions: dict | None = None) -> dict:
    """The summary (as aggregation writes it) of the ensemble of these experiments' summaries, seed by seed.

    `predictions`: a dict that keeps the predictions.tsv files read (by path), for several ensembles of the
    same candidates."""
    predictions = {} if predictions is None else predictions
    names = list(members)
    summaries = list(members.values())
    classes = summaries[0]["classes"]
    seeds = summaries[0]["seeds"]
    for name, summary in members.items():
        if sorted(summary["seeds"]) != sorted(seeds):
            raise EnsembleError(f"member {name} ran seeds {summary['seeds']}, {names[0]} ran {seeds}; give every "
                                "member the same seeds")
        if summary["classes"] != classes:
            raise EnsembleError(f"member {name} predicts {summary['classes']}, {names[0]} predicts {classes}")
    class_id = {c: i for i, c in enumerate(classes)}
    protocol = {**summaries[0]["protocol"], "selected_epoch": None, "epochs_run": None}
    chose_by = {name: summary["protocol"].get("selection_metric") for name, summary in members.items()}
    if len(set(chose_by.values())) > 1:  # the first member's alone would be shown as every member's
        protocol["selection_metric"] = ("each member's own (" + ", ".join(f"{name}: {metric}" for name, metric in
                                                                         chose_by.items()) + ")")
    runs, run_names = [], []
    for seed in seeds:
        averaged = ensemble_predictions(members, seed, predictions)
        run = {"seed": seed, "classes": classes,
               "protocol": {**protocol, "note": f"ensemble: mean class probabilities of {names}, seed {seed}"}}
        for split, rows in averaged.groupby("split", sort=False):
            labelled = rows[rows["label"] != ""]
            unknown = sorted(set(labelled["label"]) - set(class_id))
            if unknown:
                files = [str(p) for p in prediction_paths(members, seed)]
                raise EnsembleError(f"{files}: labels {unknown[:5]} are not "
                                    f"among the classes {classes}; were the members trained on this manifest?")
            run[split] = classification_metrics(labelled["label"].map(class_id).to_numpy(),
                                                labelled["prediction"].map(class_id).to_numpy(), classes)
        runs.append(run)
        run_names.append(f"ensemble of {', '.join(names)}: seed {seed}")
    summary = summarize_runs(runs, run_names)
    summary["ensemble"] = {"members": names, "combine": "mean of class probabilities, seed by seed"}
    logger.info("ensemble of %s: valid weighted F1 %.2f", names, summary["metrics"]["valid.weighted_f1"]["mean"])
    return summary
