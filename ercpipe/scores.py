"""How scores are compared: epochs by their selection score, candidates by their mean (imports nothing, so every
job's environment can use it).

Equal scores reached with other predictions differ in their last bits (a weighted F1 adds the classes' terms in
another order: 106640/1197 came out as 89.08939014202171 and ...173), and a tie must keep the earlier epoch or
the candidate listed first; scores that really differ do so by far more than SCORE_TOLERANCE.
"""
from __future__ import annotations

SCORE_TOLERANCE = 1e-9


def is_better(score: float, best: float) -> bool:
    """Whether `score` beats `best` beyond float noise (strict: a tie keeps the earlier one)."""
    return score > best + SCORE_TOLERANCE


def tie_key(score: float) -> float:
    """`score` with float noise removed, to sort by (equal scores then keep the given order)."""
    return round(score, 9)
