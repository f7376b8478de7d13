"""Choose one of several finished experiments by a dev-split score (never a test score).

A selection names candidate experiments (e.g. the same model on encoders fine-tuned with different seeds),
or a search makes them (ercpipe.search). Each candidate is trained and aggregated as usual; the selection
reads their summaries, ranks them by the mean over seeds of one *valid*-split metric (optionally with
ensembles of the best ones as more candidates: ercpipe.train.ensemble), and republishes the winner's
summary as its own, with the ranking. The candidates' test numbers are never read to choose.
"""
from __future__ import annotations

import csv
import html
import json
import logging
import shutil
from pathlib import Path
from typing import Mapping

import pandas as pd

from ercpipe.errors import ErcpipeError
from ercpipe.io.atomic import atomic_dir, atomic_path, write_json
from ercpipe.report import experiment_summary_sections, html_page, write_html
from ercpipe.scores import best_first
from ercpipe.train.aggregation import write_summary_table

logger = logging.getLogger(__name__)

# Only dev-split scores may choose: a selection by a test score would make the reported test number optimistic.
SELECTION_METRICS = ("valid.weighted_f1", "valid.macro_f1", "valid.accuracy")


class SelectionError(ErcpipeError, ValueError):
    """The candidates cannot be compared; the message names the summary file and what is wrong."""


def rank_candidates(summaries: Mapping[str, dict], metric: str) -> list[dict]:
    """The candidates best first by the mean of `metric` over seeds; ties keep the given order."""
    if metric not in SELECTION_METRICS:
        raise SelectionError(f"metric {metric!r} cannot choose among experiments; use one of {list(SELECTION_METRICS)}")
    rows = []
    for order, (name, summary) in enumerate(summaries.items()):
        score = summary["metrics"].get(metric)
        if score is None:
            raise SelectionError(f"experiment {name} has no {metric} in its summary (was it trained without a "
                                 "valid split?); a selection needs every candidate scored on dev")
        rows.append({"experiment": name, "order": order, "mean": score["mean"], "std": score["std"],
                     "n": score["n"], "values": score["values"]})
    rows = [rows[i] for i in best_first([r["mean"] for r in rows])]
    return rows


def ensemble_name(members: int) -> str:
    return f"ensemble_top{members}"


def ensemble_sizes(ensemble: int | str | None, n_candidates: int) -> list[int]:
    """The member counts of a selection's ensembles: none, k (the k best), or "all" (every k from 2 to the
    number of candidates: how many of the best to average is then chosen on dev like everything else)."""
    if ensemble is None:
        return []
    if ensemble == "all":
        return list(range(2, n_candidates + 1))
    if not isinstance(ensemble, int) or not 2 <= ensemble <= n_candidates:
        raise SelectionError(f"ensemble {ensemble!r}: give a number of members between 2 and {n_candidates} "
                             "(the candidates), or all")
    return [ensemble]


# What a selection records of each member of its ensembles: the runs it averaged, as their summary listed them then.
MEMBER_RUN_KEYS = ("seeds", "runs", "run_metrics_sha256")


def select_experiment(summary_paths: Mapping[str, str | Path], out_dir: str | Path,
                      metric: str = "valid.weighted_f1", ensemble: int | str | None = None,
                      skipped: list[dict] | None = None) -> str:
    """Write selection.tsv, the chosen candidate's summary.json / .tsv / .html and its predictions (predictions/
    seed{s}.tsv, the columns of a run's predictions.tsv) into out_dir; return its name.

    With `ensemble` = k, the k best candidates on dev are also averaged (ercpipe.train.ensemble) and the
    ensemble is ranked as one more candidate; with "all", one ensemble per k from 2 to the number of
    candidates (ensemble_sizes). `skipped`: candidates a search left out, with the reason (reported in
    summary.json).
    """
    predictions: dict = {}  # members' predictions.tsv, read once for all the ensembles
    if len(summary_paths) < 2:
        raise SelectionError(f"a selection needs at least two candidate experiments, got {list(summary_paths)}")
    summaries = {}
    for name, path in summary_paths.items():
        path = Path(path)
        if not path.exists():
            raise SelectionError(f"{path} does not exist; experiment {name} has not been aggregated")
        summaries[name] = json.loads(path.read_text())
    compat = {name for name, s in summaries.items() if s["paper_compat"]}
    if compat:
        raise SelectionError(f"experiments {sorted(compat)} chose their epochs on the test split (paper-compat "
                             "protocol); a selection on dev among them would still report a test-tuned number")
    classes = {json.dumps(s["classes"]) for s in summaries.values()}
    if len(classes) != 1:
        raise SelectionError(f"the candidates {list(summaries)} predict different classes {sorted(classes)}")
    unequal_seeds = _unequal_seeds(out_dir, summaries)
    ranking = rank_candidates(summaries, metric)
    ensembles: dict[str, dict] = {}
    sizes = ensemble_sizes(ensemble, len(summaries))
    if sizes:
        from ercpipe.train.ensemble import ensemble_summary

        for size in sizes:
            name = ensemble_name(size)
            if name in summaries:
                raise SelectionError(f"a candidate is named {name}, the name of one of the selection's ensembles; "
                                     "rename it")
            members = [r["experiment"] for r in ranking[:size]]
            ensembles[name] = ensemble_summary({m: summaries[m] for m in members}, predictions)
        summaries.update(ensembles)
        ranking = rank_candidates(summaries, metric)
    chosen = ranking[0]["experiment"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    table = pd.DataFrame([{"rank": i + 1, "experiment": r["experiment"], f"{metric} mean": r["mean"],
                           f"{metric} std": r["std"], "n": r["n"],
                           "values": ",".join(f"{x:.4g}" for x in r["values"]),
                           "chosen": r["experiment"] == chosen} for i, r in enumerate(ranking)])
    with atomic_path(out_dir / "selection.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, lineterminator="\n", float_format="%.4f", quoting=csv.QUOTE_MINIMAL)

    selection = {"metric": metric, "chosen": chosen, "candidates": list(summaries),
                 "ranking": [{k: r[k] for k in ("experiment", "mean", "std", "n")} for r in ranking],
                 "chosen_summary": str(Path(summary_paths[chosen])) if chosen in summary_paths else None,
                 # with the members' summaries, where `ercpipe predict` finds their runs' model.pt files, and the
                 # runs averaged here (a member's summary is written again when one of its seeds is re-trained)
                 "ensembles": {name: {**e["ensemble"], "summaries": [str(summary_paths[m]) for m in
                                                                     e["ensemble"]["members"]],
                                      "member_runs": {m: {k: summaries[m].get(k) for k in MEMBER_RUN_KEYS}
                                                      for m in e["ensemble"]["members"]}}
                               for name, e in ensembles.items()},
                 "skipped": list(skipped or []), "unequal_seeds": unequal_seeds,
                 "official_class_weights": _with_official_class_weights(
                     ensembles[chosen]["ensemble"]["members"] if chosen in ensembles else [chosen], summaries)}
    _write_predictions(out_dir / "predictions", summaries, chosen, ensembles, predictions)
    write_json(out_dir / "summary.json", {**summaries[chosen], "selection": selection})
    write_summary_table(summaries[chosen]["metrics"], out_dir / "summary.tsv")
    write_html(out_dir / "summary.html", _selection_html(out_dir.name, summaries[chosen], table, selection))
    logger.info("selection %s: %s chosen by %s (%s)", out_dir.name, chosen, metric,
                ", ".join(f"{r['experiment']} {r['mean']:.2f}" for r in ranking))
    return chosen


def _with_official_class_weights(names: list[str], summaries: Mapping[str, dict]) -> list[str]:
    """Which of these experiments weigh their classes with the official code's fixed vector (loss.class_weights:
    paper), which its authors computed from the whole dataset's class counts, test included (their runs'
    metrics.json says so)."""
    out = []
    for name in names:
        for run in summaries[name].get("runs") or []:
            try:
                weights = json.loads((Path(run) / "metrics.json").read_text()).get("class_weights") or {}
            except (OSError, ValueError):
                continue
            if str(weights.get("source", "")).startswith("paper"):
                out.append(name)
                break
    return out


def _unequal_seeds(out_dir, summaries: Mapping[str, dict]) -> dict[str, list[int]] | None:
    """Each candidate's seeds when they differ (else None), with a warning: the means are then not paired, and a
    candidate of fewer seeds varies more, so it comes out best by chance more often."""
    seeds = {name: list(summary.get("seeds") or []) for name, summary in summaries.items()}
    if len({tuple(sorted(s)) for s in seeds.values()}) == 1:
        return None
    logger.warning("selection %s: the candidates ran different seeds (%s); their dev means are not compared seed "
                   "for seed, and one of fewer seeds wins by chance more often; give every candidate the same "
                   "`seeds`", Path(out_dir).name, "; ".join(f"{name} {s}" for name, s in seeds.items()))
    return seeds


def _write_predictions(folder: Path, summaries: Mapping[str, dict], chosen: str, ensembles: Mapping[str, dict],
                       predictions: dict) -> None:
    """The chosen candidate's predictions, seed{s}.tsv per seed (the columns of a run's predictions.tsv): a
    trained experiment's copied from its runs, an ensemble's averaged from its members' (ensemble_predictions)."""
    summary = summaries[chosen]
    with atomic_dir(folder) as tmp:
        if chosen in ensembles:
            from ercpipe.train.ensemble import ensemble_predictions

            members = {name: summaries[name] for name in ensembles[chosen]["ensemble"]["members"]}
            for seed in summary["seeds"]:
                ensemble_predictions(members, seed, predictions).to_csv(
                    Path(tmp) / f"seed{seed}.tsv", sep="\t", index=False, lineterminator="\n", float_format="%.6g")
        else:
            for seed, run in zip(summary["seeds"], summary["runs"]):
                source = Path(run) / "predictions.tsv"
                if not source.exists():
                    raise SelectionError(f"{source} does not exist; the chosen experiment {chosen}'s seed {seed} "
                                         "has not finished")
                shutil.copyfile(source, Path(tmp) / f"seed{seed}.tsv")


def _selection_html(name: str, chosen_summary: dict, table: pd.DataFrame, selection: dict) -> str:
    note = (f"Candidates ranked by the mean over seeds of <b>{html.escape(selection['metric'])}</b> (dev split "
            f"only); <b>{html.escape(selection['chosen'])}</b> is chosen and its numbers follow. Test scores "
            "played no part in the choice.")
    if selection["ensembles"]:
        note += (" Each ensemble_top<i>k</i> averages the class probabilities of the <i>k</i> best candidates on "
                 "dev, seed by seed.")
        if selection["chosen"] in selection["ensembles"]:
            members = selection["ensembles"][selection["chosen"]]["members"]
            note += f" The chosen one averages {html.escape(', '.join(members))}."
    if selection["unequal_seeds"]:
        note += (" <b>The candidates ran different seeds</b> (" + html.escape("; ".join(
            f"{name} {seeds}" for name, seeds in selection["unequal_seeds"].items())) + "): their means are not "
            "compared seed for seed, and one of fewer seeds comes out best by chance more often.")
    official = selection.get("official_class_weights")
    if official:
        note += (f" {html.escape(', '.join(official))} weigh the classes with the official code's fixed vector "
                 "(loss.class_weights: paper), which its authors computed from the whole dataset's class counts, "
                 "test included; the choice itself read dev scores only.")
    for left_out in selection["skipped"]:
        note += f" Left out: class_weights {html.escape(left_out['class_weights'])} ({html.escape(left_out['reason'])})."
    # Scores in percent to two decimals, as the summaries below show them (selection.tsv keeps four).
    return html_page(f"Selection {name}: {selection['chosen']}",
                     [("Candidates (dev)", table.round(2), note), *experiment_summary_sections(chosen_summary)])
