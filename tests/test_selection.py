"""Choosing among experiments on dev: the ranking, the published summary, and what it refuses."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ercpipe.train.selection import SelectionError, select_experiment

CLASSES = ["neutral", "joy", "anger"]


def write_summary(root: Path, name: str, valid: list[float] | None, test: list[float], paper_compat=False) -> Path:
    """The summary.json of an aggregated experiment, as aggregate_experiment leaves it."""
    def metric(values):
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
        return {"mean": mean, "std": std, "n": len(values), "values": values}

    metrics = {"test.weighted_f1": metric(test), "test.accuracy": metric(test)}
    if valid is not None:
        metrics |= {"valid.weighted_f1": metric(valid), "valid.accuracy": metric(valid),
                    "valid.macro_f1": metric([v - 10 for v in valid])}
    summary = {"n_runs": len(test), "seeds": list(range(len(test))), "classes": CLASSES, "metrics": metrics,
               "protocol": {"selection_split": "test" if paper_compat else "valid",
                            "selection_metric": "weighted_f1"},
               "paper_compat": paper_compat}
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder / "summary.json"


def test_the_best_dev_mean_is_chosen_whatever_test_says(tmp_path):
    paths = {"enc0": write_summary(tmp_path, "enc0", valid=[59.4, 59.6], test=[63.0, 63.2]),
             "enc1": write_summary(tmp_path, "enc1", valid=[59.9, 60.0], test=[61.0, 61.1]),
             "enc2": write_summary(tmp_path, "enc2", valid=[58.2, 58.4], test=[64.0, 64.1])}
    out = tmp_path / "best"
    assert select_experiment(paths, out) == "enc1"
    ranking = pd.read_csv(out / "selection.tsv", sep="\t")
    assert ranking["experiment"].tolist() == ["enc1", "enc0", "enc2"]
    assert ranking["chosen"].tolist() == [True, False, False]
    assert ranking["valid.weighted_f1 mean"].round(2).tolist() == [59.95, 59.5, 58.3]
    published = json.loads((out / "summary.json").read_text())
    assert published["metrics"]["test.weighted_f1"]["values"] == [61.0, 61.1]  # the chosen one's numbers
    assert published["selection"]["chosen"] == "enc1" and published["selection"]["candidates"] == ["enc0", "enc1", "enc2"]
    table = pd.read_csv(out / "summary.tsv", sep="\t").set_index("metric")
    assert table.loc["test.weighted_f1", "mean"] == pytest.approx(61.05) and table.loc["valid.weighted_f1", "n"] == 2
    page = (out / "summary.html").read_text()
    assert "Candidates (dev)" in page and "Per class" in page and "enc1" in page


def test_another_dev_metric_can_choose(tmp_path):
    paths = {"a": write_summary(tmp_path, "a", valid=[50.0], test=[50.0]),
             "b": write_summary(tmp_path, "b", valid=[52.0], test=[40.0])}
    assert select_experiment(paths, tmp_path / "sel", metric="valid.macro_f1") == "b"


def test_a_tie_goes_to_the_candidate_listed_first(tmp_path):
    paths = {"late": write_summary(tmp_path, "late", valid=[60.0, 61.0], test=[1.0]),
             "early": write_summary(tmp_path, "early", valid=[61.0, 60.0], test=[2.0])}
    assert select_experiment(paths, tmp_path / "sel") == "late"


@pytest.mark.parametrize("metric", ["test.weighted_f1", "train.loss"])
def test_only_dev_scores_may_choose(tmp_path, metric):
    paths = {n: write_summary(tmp_path, n, valid=[50.0], test=[50.0]) for n in ("a", "b")}
    with pytest.raises(SelectionError, match="cannot choose among experiments"):
        select_experiment(paths, tmp_path / "sel", metric=metric)


def test_refusals_name_the_experiment(tmp_path):
    ok = write_summary(tmp_path, "ok", valid=[50.0], test=[50.0])
    no_dev = write_summary(tmp_path, "no_dev", valid=None, test=[50.0])
    with pytest.raises(SelectionError, match="experiment no_dev has no valid.weighted_f1"):
        select_experiment({"ok": ok, "no_dev": no_dev}, tmp_path / "sel")
    compat = write_summary(tmp_path, "compat", valid=[55.0], test=[60.0], paper_compat=True)
    with pytest.raises(SelectionError, match=r"\['compat'\] chose their epochs on the test split"):
        select_experiment({"ok": ok, "compat": compat}, tmp_path / "sel")
    with pytest.raises(SelectionError, match="has not been aggregated"):
        select_experiment({"ok": ok, "gone": tmp_path / "gone" / "summary.json"}, tmp_path / "sel")
    with pytest.raises(SelectionError, match="at least two candidate"):
        select_experiment({"ok": ok}, tmp_path / "sel")
    assert not (tmp_path / "sel" / "summary.json").exists()
