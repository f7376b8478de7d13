"""Classification metrics over valid utterances, in percent (spec 5.4, O9).

`accuracy` is accuracy. `weighted_precision` is what the official VEGA code prints and the paper reports
as "ACC" for SDT-VEGA rows; the SDT paper's ACC is accuracy. Both are reported, with weighted and macro F1,
per-class recall (= per-class accuracy), precision and F1, and the confusion matrix (rows = true label).
A per-class score that is undefined is None, not 0: recall (and F1) of a class with no utterance in the split,
precision of a class that is never predicted (F1 stays defined, 0, when the class occurs but is never
predicted or is predicted but never occurs).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

SCALAR_METRICS = ("accuracy", "weighted_f1", "macro_f1", "weighted_precision")


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, classes: Sequence[str]) -> dict:
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    keep = labels >= 0
    y, p = labels[keep], predictions[keep]
    ids = list(range(len(classes)))
    if len(y) == 0:
        raise ValueError("no labelled utterances to score")
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=ids, zero_division=0)
    weights = support / support.sum()
    return {
        "n": int(len(y)),
        "accuracy": float(100 * (y == p).mean()),
        "weighted_f1": float(100 * (weights * f1).sum()),
        # macro over the classes that occur as label or prediction (scikit-learn's default label set)
        "macro_f1": float(100 * f1[np.isin(ids, np.union1d(y, p))].mean()),
        "weighted_precision": float(100 * (weights * prec).sum()),
        "per_class": _per_class(prec, rec, f1, support, np.bincount(p, minlength=len(classes)), classes),
        "confusion": confusion_matrix(y, p, labels=ids).astype(int).tolist(),
    }


def _per_class(prec, rec, f1, support, predicted, classes: Sequence[str]) -> dict:
    def score(value: float, defined: bool) -> float | None:
        return float(100 * value) if defined else None

    return {c: {"recall": score(rec[i], support[i] > 0), "precision": score(prec[i], predicted[i] > 0),
                "f1": score(f1[i], support[i] > 0 or predicted[i] > 0), "support": int(support[i])}
            for i, c in enumerate(classes)}


def weighted_f1(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> float:
    keep = np.asarray(labels) >= 0
    _, _, f1, support = precision_recall_fscore_support(np.asarray(labels)[keep], np.asarray(predictions)[keep],
                                                        labels=list(range(n_classes)), zero_division=0)
    return float(100 * (support / max(support.sum(), 1) * f1).sum())
