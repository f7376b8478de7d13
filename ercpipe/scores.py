"""How scores are compared: epochs by their selection score, candidates by their mean (imports nothing, so every
job's environment can use it).

Equal scores reached with other predictions differ in their last bits (a weighted F1 adds the classes' terms in
another order: 106640/1197 came out as 89.08939014202171 and ...173), and a tie must keep the earlier epoch or
the candidate listed first; scores that really differ do so by far more than SCORE_TOLERANCE.
"""
from __future__ import annotations

import functools

SCORE_TOLERANCE = 1e-9


def is_better(score: float, best: float) -> bool:
    """Whether `score` beats `best` beyond float noise (strict: a tie keeps the earlier one)."""
    return score > best + SCORE_TOLERANCE


def best_first(scores: list[float]) -> list[int]:
    """Indices of `scores` best first by is_better; equal ones (within the tolerance) keep their given order."""
    def compare(i: int, j: int) -> int:
        if is_better(scores[i], scores[j]):
            return -1
        if is_better(scores[j], scores[i]):
            return 1
        return i - j

    return sorted(range(len(scores)), key=functools.cmp_to_key(compare))
