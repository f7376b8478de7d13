"""Aggregate the seeds of one experiment: mean +- std of every metric, curves, confusion matrix, t-SNE."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ercpipe.errors import ErcpipeError
from ercpipe.io.atomic import atomic_path, write_json
from ercpipe.io.digest import file_digest
from ercpipe.io.features import device_kind, flat_keys
from ercpipe.report import PROVENANCE, experiment_summary_html, mixed_provenance_note, write_html
from ercpipe.train.metrics import SCALAR_METRICS

logger = logging.getLogger(__name__)


class AggregateError(ErcpipeError, ValueError):
    """The runs cannot be aggregated; the message names the run folder and what is wrong."""


def _flatten(metrics: dict) -> dict[str, float]:
    """Every number of a run's metrics, keyed like 'test.weighted_f1' or 'test.per_class.sad.f1'."""
    flat: dict[str, float] = {}
    for split in ("valid", "test"):
        block = metrics.get(split)
        if not block:
            continue
        for key in SCALAR_METRICS:
            flat[f"{split}.{key}"] = block[key]
        for head, value in block.get("unimodal_weighted_f1", {}).items():
            flat[f"{split}.unimodal_weighted_f1.{head}"] = value
        for cls, values in block["per_class"].items():
            for key in ("recall", "precision", "f1", "support"):
                if values.get(key) is not None:  # None: undefined in this run (ercpipe.train.metrics)
                    flat[f"{split}.per_class.{cls}.{key}"] = values[key]
    for key in ("selected_epoch", "epochs_run"):  # None for an ensemble (ercpipe.train.ensemble)
        if metrics["protocol"].get(key) is not None:
            flat[key] = metrics["protocol"][key]
    for branch, temps in (metrics.get("temperatures") or {}).items():
        for m, value in temps.items():
            flat[f"temperature.{branch}.{m}"] = value
    if metrics.get("seconds_per_epoch") is not None:
        flat["seconds_per_epoch"] = metrics["seconds_per_epoch"]
    return flat


def _read_run(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    if not path.exists():
        raise AggregateError(f"{path} does not exist; the run in {run_dir} has not finished")
    return json.loads(path.read_text())


# How a seed's results come to be older than the experiment's settings.
LEFT_OVER_CAUSES = ("a run with --rerun-triggers that leave out params (a changed setting then re-trains nothing), "
                    "or a job that outlived a killed Snakemake and finished after the config changed")


def _check_same_settings(run_dirs: Sequence[Path], runs: Sequence[dict], expected: dict | None = None) -> None:
    """Every seed of an experiment must have been trained with the same settings (those a resume state must
    match too, ercpipe.train.trainer.training_config), and with `expected` (the experiment's resolved config,
    when given) those: a run left over from other ones (a job that outlived a killed Snakemake and ended after
    the re-run, having written its outputs under the new config's name) is named, not averaged in."""
    from ercpipe.train.trainer import training_config

    def settings(run: dict) -> dict:
        return flat_keys(training_config(run.get("config") or {}))

    def experiment(run_config: dict) -> dict:
        # What the run was trained on too: its dataset, feature settings and anchor set.
        return flat_keys({**training_config(run_config), **{k: run_config.get(k) for k in ("dataset", "features",
                                                                                           "anchors")}})

    def differing(a: dict, b: dict) -> list[str]:
        return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))

    if expected is not None:
        wanted = experiment(expected)
        for run_dir, run in zip(run_dirs, runs):
            got = experiment(run.get("config") or {})
            differ = differing(wanted, got)
            if differ:
                key = differ[0]
                raise AggregateError(
                    f"{run_dir} was trained with {key} = {got.get(key)!r}, but the experiment now sets "
                    f"{wanted.get(key)!r} ({len(differ)} setting(s) differ): it is left over from earlier settings, "
                    f"e.g. {LEFT_OVER_CAUSES}; delete {run_dir}/metrics.json and run Snakemake again")
    first = settings(runs[0])
    for run_dir, run in zip(run_dirs[1:], runs[1:]):
        other = settings(run)
        differ = differing(first, other)
        if differ:
            key = differ[0]
            raise AggregateError(
                f"{run_dir} was trained with {key} = {other.get(key)!r}, {run_dirs[0]} with {first.get(key)!r} "
                f"({len(differ)} setting(s) differ): one of them is left over from other settings, e.g. "
                f"{LEFT_OVER_CAUSES}; delete the stale seed folder's metrics.json and run Snakemake again")


def aggregate(run_dirs: Sequence[str | Path], out_dir: str | Path, expected: dict | None = None) -> None:
    """Write summary.json, summary.tsv, summary.html, curves.png, confusion.png and tsne.png into out_dir.
    expected: the experiment's resolved config; every run must have been trained with its settings."""
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise AggregateError("no run folders to aggregate")
    out_dir = Path(out_dir)
    runs = [_read_run(p) for p in run_dirs]
    _check_same_settings(run_dirs, runs, expected)
    summary = summarize_runs(runs, [str(p) for p in run_dirs])
    # Which trainings these are: a seed trained again later (a killed re-run, a partial target) leaves this summary,
    # and a selection that copies it, describing models no longer there; predict compares (infer.checkpoint_files).
    summary["run_metrics_sha256"] = [file_digest(p / "metrics.json") for p in run_dirs]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "summary.json", summary)
    write_summary_table(summary["metrics"], out_dir / "summary.tsv")
    write_html(out_dir / "summary.html", experiment_summary_html(summary, f"Experiment {out_dir.name}"))
    _plot_curves(run_dirs, runs, out_dir / "curves.png")
    confusion = summary["mean_confusion"].get("test")
    _plot_confusion(None if confusion is None else np.array(confusion), summary["classes"], len(runs),
                    _test_selected_note(runs), out_dir / "confusion.png")
    _plot_tsne(run_dirs, _test_selected_note(runs), out_dir / "tsne.png")
    note = mixed_provenance_note(summary)
    if note:
        logger.warning("%s: %s", out_dir, note)
    logger.info("aggregated %d runs into %s", len(runs), out_dir)


def _provenance(run: dict) -> dict:
    """A run's PROVENANCE, normalised so that only differences that change results count: the thread count on a
    CPU only (a GPU computes the same with any), as a list of the run's counts (older runs recorded one number),
    and devices without a GPU's index (cuda:0 and cuda:1 of one kind compute alike)."""
    versions = run.get("versions") or {}
    on_cpu = str(run.get("device", "cpu")).startswith("cpu")
    threads = (run.get("thread_counts") or ([run["threads"]] if run.get("threads") is not None else None)) \
        if on_cpu else None
    devices = run.get("devices") or [run.get("device")]
    return {"seed": run.get("seed"), "ercpipe": versions.get("ercpipe"), "torch": versions.get("torch"),
            "threads": threads, "devices": [device_kind(str(d)) for d in devices],
            "inputs": run.get("inputs")}


def summarize_runs(runs: Sequence[dict], run_dirs: Sequence[str]) -> dict:
    """The summary of several runs' metrics.json contents (named by run_dirs): mean, sample std and values of
    every number, the mean confusion matrices and the protocol."""
    classes = runs[0]["classes"]
    protocols = {json.dumps({k: r["protocol"][k] for k in ("selection_split", "paper_compat")}) for r in runs}
    if len(protocols) != 1:
        raise AggregateError(f"the runs {[str(p) for p in run_dirs]} use different protocols {sorted(protocols)}; "
                             "aggregate them separately")
    for run_dir, run in zip(run_dirs, runs):
        if run["classes"] != classes:
            raise AggregateError(f"{run_dir} has classes {run['classes']}, the first run has {classes}")
    flats = [_flatten(r) for r in runs]
    # A per-class score undefined in some runs (a class never predicted) is summarised over the runs where
    # it is defined; `n` says how many.
    keys = list(dict.fromkeys(k for f in flats for k in f))
    summary_metrics = {}
    for key in keys:
        values = np.array([f[key] for f in flats if key in f], dtype=float)
        summary_metrics[key] = {"mean": float(values.mean()),
                                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                "n": int(len(values)), "values": values.tolist()}
    confusion = {split: np.mean([np.array(r[split]["confusion"], dtype=float) for r in runs], axis=0).tolist()
                 for split in ("valid", "test") if all(r.get(split) for r in runs)}
    provenance = [_provenance(r) for r in runs]
    mixed = [key for key in PROVENANCE if len({json.dumps(p.get(key), sort_keys=True) for p in provenance}) > 1]
    summary = {
        "n_runs": len(runs), "runs": [str(p) for p in run_dirs], "seeds": [r["seed"] for r in runs],
        "provenance": provenance, "mixed_provenance": mixed,
        "classes": classes, "protocol": runs[0]["protocol"] | {"selected_epoch": None, "epochs_run": None},
        "paper_compat": runs[0]["protocol"]["paper_compat"],
        "std": "sample standard deviation over runs (ddof=1); 0 for a single run",
        "metrics": summary_metrics, "mean_confusion": confusion,
    }
    return summary


def write_summary_table(summary_metrics: dict, path: str | Path) -> None:
    """summary.tsv: one row per metric of a summary (metric, mean, std, n, per-run values)."""
    table = pd.DataFrame([{"metric": k, "mean": v["mean"], "std": v["std"], "n": v["n"],
                           "values": ",".join(f"{x:.4g}" for x in v["values"])} for k, v in summary_metrics.items()])
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, lineterminator="\n", float_format="%.4f", quoting=csv.QUOTE_MINIMAL)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _drawable_names(classes: Sequence[str]) -> tuple[list[str], str]:
    """Class names for figure labels: as they are when matplotlib's font has every glyph, else "class k" (a
    CJK label would be drawn as empty boxes), with a note that says where the names are."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    charmap = FT2Font(font_manager.findfont(font_manager.FontProperties())).get_charmap()
    drawable = [all(ord(ch) in charmap for ch in name) for name in classes]
    if all(drawable):
        return list(classes), ""
    # Only the names the font cannot draw are replaced (by their label id), the others stay readable.
    logger.warning("the figures' font cannot draw the class name(s) %s; the figures call them class k, k = their "
                   "place in summary.json's classes (from 0)", [c for c, ok in zip(classes, drawable) if not ok])
    return ([name if ok else f"class {k}" for k, (name, ok) in enumerate(zip(classes, drawable))],
            "class k = the k-th of summary.json's classes, from 0")


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")


METRIC_TITLES = {"weighted_f1": "weighted F1", "accuracy": "accuracy", "macro_f1": "macro F1",
                 "weighted_precision": "weighted precision"}


def _test_selected_note(runs: Sequence[dict]) -> str:
    """The mark every figure of a paper_compat experiment carries: its epochs were chosen on the test split."""
    return " (epoch chosen on TEST: paper_compat)" if runs[0]["protocol"]["paper_compat"] else ""


def _plot_curves(run_dirs: list[Path], runs: list[dict], path: Path) -> None:
    """Training loss, then the selection split's loss, selection metric and accuracy per epoch, one colour per
    seed; a dotted line of the seed's colour marks its selected epoch in every panel."""
    plt = _pyplot()
    selection, metric = runs[0]["protocol"]["selection_split"], runs[0]["protocol"]["selection_metric"]
    panels = [("train_total", "training loss"), (f"{selection}_loss_total", f"{selection} loss"),
              (f"{selection}_{metric}", f"{selection} {METRIC_TITLES.get(metric, metric)} (%, selects the epoch)")]
    if metric != "accuracy":
        panels.append((f"{selection}_accuracy", f"{selection} accuracy (%)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for run_dir, run in zip(run_dirs, runs):
        history_path = run_dir / "history.tsv"
        if not history_path.exists():
            logger.warning("%s has no history.tsv; its curves are left out", run_dir)
            continue
        history = pd.read_csv(history_path, sep="\t")
        colour = None
        for ax, (column, _) in zip(axes, panels):
            if column in history:
                (line,) = ax.plot(history["epoch"], history[column], label=f"seed {run['seed']}", linewidth=1,
                                  color=colour)
                colour = line.get_color()
        selected = run["protocol"]["selected_epoch"]
        if selected is not None:
            for ax in axes:
                ax.axvline(selected, color=colour or "grey", linewidth=0.7, linestyle=":")
    from matplotlib.ticker import MaxNLocator

    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a 3-epoch run had ticks at 1.25, 1.5, ...
    axes[0].legend(fontsize=7)
    note = _test_selected_note(runs)
    if note:
        fig.suptitle(note.strip(" ()") + ": the test curves chose the epoch, so test scores are optimistic",
                     color="darkred")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _plot_confusion(matrix: np.ndarray | None, classes: list[str], n_runs: int, note: str, path: Path) -> None:
    """The mean test confusion matrix over the runs (counts and row percentages); a placeholder without a test
    split (the file is a declared output either way)."""
    plt = _pyplot()
    if matrix is None:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no test split: no test confusion matrix", ha="center", va="center")
        ax.set_axis_off()
        _save(fig, path)
        plt.close(fig)
        return
    rows = matrix.sum(axis=1, keepdims=True)
    normalized = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    # Room for the longest name on both axes (tick labels take about 0.09 inch per character at this size).
    longest = 0.09 * max((len(str(c)) for c in classes), default=0)
    fig, ax = plt.subplots(figsize=(1.0 * len(classes) + 2 + longest, 1.0 * len(classes) + 1.5 + longest))
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{matrix[i, j]:.1f}\n{100 * normalized[i, j]:.0f}%", ha="center", va="center", fontsize=7,
                    color="white" if normalized[i, j] > 0.5 else "black")
    names, names_note = _drawable_names(classes)
    ax.set_xticks(range(len(classes)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), names)
    ax.set_xlabel("predicted" + (f"\n({names_note})" if names_note else ""))
    ax.set_ylabel("true")
    ax.set_title(f"test: mean confusion over {n_runs} run(s) (counts, row %){note}")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _plot_tsne(run_dirs: list[Path], note: str, path: Path) -> None:
    """t-SNE of the fused test representations of the first run that has them (one seed, by label)."""
    from sklearn.manifold import TSNE

    plt = _pyplot()
    source = next((p / "fused.npz" for p in run_dirs if (p / "fused.npz").exists()), None)
    fig, ax = plt.subplots(figsize=(6, 5))
    if source is None:
        ax.text(0.5, 0.5, "no fused representations (no test split)", ha="center", va="center")
    else:
        data = np.load(source, allow_pickle=False)
        fused, labels, classes = data["fused"], data["labels"], [str(c) for c in data["classes"]]
        n = len(fused)
        if n == 0:
            ax.text(0.5, 0.5, "no fused representations (no test split)", ha="center", va="center")
        elif n < 5:
            ax.text(0.5, 0.5, f"only {n} test utterances: no t-SNE", ha="center", va="center")
        else:
            points = TSNE(n_components=2, perplexity=float(min(30, max(2, (n - 1) // 3))), init="pca",
                          random_state=0).fit_transform(fused.astype(np.float64))
            names, names_note = _drawable_names(classes)
            for i, name in enumerate(names):
                sel = labels == i
                if sel.any():
                    ax.scatter(points[sel, 0], points[sel, 1], s=6, label=name, alpha=0.8)
            ax.legend(markerscale=2, fontsize=7, title=names_note or None, title_fontsize=6)
        ax.set_title(f"t-SNE of fused test representations ({source.parent.name}){note}")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
