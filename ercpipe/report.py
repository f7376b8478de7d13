"""Tables for the Snakemake report: feature coverage per split, experiment summaries, the benchmark summary."""
from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Sequence

import pandas as pd

from ercpipe.io import features, manifest
from ercpipe.io.atomic import atomic_path
from ercpipe.labels import MODALITIES

logger = logging.getLogger(__name__)


def feature_coverage(manifest_path: str | Path, feature_paths: Sequence[str | Path], out_path: str | Path,
                     html_path: str | Path | None = None, summary_path: str | Path | None = None) -> pd.DataFrame:
    """One row per split (and a total): utterances, defect flags, and present/missing per feature file; the html
    page adds what the dataset's summary.json says (declared modalities, checks against the release)."""
    df = manifest.read(manifest_path)
    ids = df["utterance_id"].tolist()
    table = pd.DataFrame({"split": df["split"]})
    table["utterances"] = 1
    for flag in manifest.FLAG_NAMES:
        hit = df["flags"].map(lambda f, name=flag: manifest.has_flag(f, name))
        if hit.any():
            table[f"flag: {flag}"] = hit.astype(int)
    reasons, attrs, unflagged = [], {}, []
    for path in feature_paths:
        fs = features.read(path, expected_ids=ids)
        name = f"{fs.attrs.get('modality', Path(path).parent.name)}/{Path(path).stem}"
        table[f"{name} missing"] = (~fs.present).astype(int)
        reasons.append(_absent_reasons(name, fs, df))
        unflagged.append(_defects_found_by_extraction(name, fs, df))
        attrs[name] = fs.attrs
    order = {s: i for i, s in enumerate(manifest.SPLITS)}
    per_split = table.groupby("split").sum().sort_index(key=lambda s: s.map(order))
    per_split.loc["all"] = per_split.sum()
    per_split = per_split.reset_index()
    with atomic_path(out_path) as tmp:
        per_split.to_csv(tmp, sep="\t", index=False)
    if html_path is not None:
        note = ("Utterances per split; <i>flag</i> columns count the raw-data defects the reader recorded, "
                "<i>missing</i> columns the utterances a feature file holds as zeros with present = False.")
        flagged = [c.removeprefix("flag: ") for c in per_split.columns if c.startswith("flag: ")]
        to_fix = [f for f in flagged if f not in manifest.NOTED_FLAGS]
        noted = [f for f in flagged if f in manifest.NOTED_FLAGS]
        if noted:
            note += f" {', '.join(noted)}: noted or repaired by the reader, nothing to do."
        if to_fix:
            note += (f" <b>{', '.join(to_fix)}</b>: the utterance lost a modality, its text or its times; the "
                     "dataset's issues.tsv names each file and what to do.")
        summary = json.loads(Path(summary_path).read_text()) if summary_path else {}
        declared = summary.get("modalities")
        if declared:
            absent = [m for m in MODALITIES if m not in declared]
            note += (f" The dataset has {', '.join(declared)}"
                     + (f"; it declares no {' or '.join(absent)} (datasets.*.modalities), so none is looked for."
                        if absent else "."))
        empty = [s for s in ("train", "test") if not (df["split"] == s).any()]
        if empty:
            note += (f" <b>No {' and no '.join(empty)} utterances</b>: "
                     + ("experiments on it have no test scores." if empty == ["test"] else "nothing can train on it."))
        sections = [("Per split", per_split, note)]
        why = pd.concat(reasons, ignore_index=True) if reasons else pd.DataFrame()
        found = pd.concat(unflagged, ignore_index=True) if unflagged else pd.DataFrame()
        if len(why):
            sections.append(("Why utterances lack a feature", why,
                             "The reason each feature file records for the utterances it holds as zeros (the first "
                             "word of it; the extraction job's log names each utterance, and the dataset's "
                             "issues.tsv each one the reader flagged"
                             + ("; the defects it did not flag are listed below)." if len(found) else ").")))
        if len(found):
            shown = found.head(MAX_LISTED_DEFECTS)
            sections.append(("Media defects the reader did not flag", shown,
                             f"{len(found)} utterance(s) whose media the extraction could not use, for a defect the "
                             "reader did not record, so issues.tsv does not list them: it opens the media files only "
                             "with probe_media: true (the default for MELD, not for a CSV dataset), and silent audio "
                             "only the extraction finds"
                             + (f" (the first {len(shown)} here; the feature files' absent attribute holds all)"
                                if len(shown) < len(found) else "")
                             + ". Fix or replace each file and run again: the extraction re-runs only for the "
                             "shards it is in."))
        labels, labels_note = _labels_per_split(df, summary.get("classes"))
        if len(labels):
            sections.append(("Labels per split", labels, labels_note))
        unread = _text_not_fully_read(attrs)
        if len(unread):
            sections.append(("Text the encoder read only in part", unread,
                             "Utterances cut at the text setting's max_length (truncated), and utterances made only of "
                             "tokens the tokenizer does not know (unknown_only: emoji, another script; their vectors "
                             "carry no words). The feature file's attributes of those names list each one."))
        rejected = summary.get("rejected_counts") or {}
        if rejected:  # issues.tsv lists them, but the report offers a TSV only as a download
            sections.append(("Rows left out of the manifest", pd.DataFrame(
                {"reason": list(rejected), "rows": [int(n) for n in rejected.values()]}),
                "Raw rows the reader rejected, per reason (e.g. a label that is not one of the classes); the "
                "dataset's issues.tsv names each with its file and line."))
        checks = release_checks(summary.get("checks") or [])
        if len(checks):
            differ = int((checks["ok"] == "no").sum())
            sections.append(("Checks against the release", checks,
                             f"{differ} of {len(checks)} differ from what the release (or the dataset's split "
                             "file) says it holds (expected on a subset of the release; otherwise a sign of missing "
                             "or extra files)."
                             if differ else "The raw data matches the release on every check."))
        write_html(html_path, html_page(f"Feature coverage: {Path(manifest_path).parent.name}", sections))
    return per_split


def _absent_reasons(name: str, fs: features.FeatureSet, df: pd.DataFrame) -> pd.DataFrame:
    """Utterances without the feature, per reason (the file's `absent` attribute: no_face, corrupt_video, ...)
    and split; rows in order of count."""
    recorded = _absent_attribute(fs)
    rows = pd.DataFrame({"split": df["split"].to_numpy()[~fs.present],
                         "reason": [_reason_word(recorded.get(u, "not recorded"))
                                    for u, present in zip(df["utterance_id"], fs.present) if not present]})
    if rows.empty:
        return pd.DataFrame()
    counts = rows.value_counts(["reason", "split"]).unstack(fill_value=0).rename_axis(columns=None)
    # Every split of the dataset, 0 where none lacks the feature: the files' tables are shown as one.
    counts = counts.reindex(columns=[s for s in manifest.SPLITS if (df["split"] == s).any()], fill_value=0)
    counts["all"] = counts.sum(axis=1)
    counts = counts.sort_values("all", ascending=False, kind="stable").reset_index()
    counts.insert(0, "feature", name)
    return counts


def _absent_attribute(fs: features.FeatureSet) -> dict[str, str]:
    """A feature file's `absent` attribute: utterance id -> why it has no vector."""
    recorded = fs.attrs.get("absent") or {}
    return json.loads(recorded) if isinstance(recorded, str) else recorded


def _reason_word(reason: str) -> str:
    """The reason's first word (a flag name such as corrupt_video, or no_face), without its detail."""
    return str(reason).split(":")[0].split(" ")[0]


# Rows of the coverage page's table of media defects found by the extraction alone (every one is in the files).
MAX_LISTED_DEFECTS = 200


def _defects_found_by_extraction(name: str, fs: features.FeatureSet, df: pd.DataFrame) -> pd.DataFrame:
    """The utterances a feature file holds as zeros for a raw-data defect (a manifest flag's name: corrupt_video,
    no_audio_stream, ...) that the reader did not record in the row's flags, with the whole reason (it names the
    file): found only when the media were opened to extract, as when the reader does not probe them."""
    recorded = _absent_attribute(fs)
    column = {"audio": "audio_path", "visual": "video_path"}.get(fs.attrs.get("modality"))
    files = df[column] if column in df else pd.Series("", index=df.index)
    rows = []
    for (utterance, split, flags), media, present in zip(
            df[["utterance_id", "split", "flags"]].itertuples(index=False), files, fs.present):
        reason = str(recorded.get(utterance, ""))
        defect = _reason_word(reason)
        if not present and defect in manifest.FLAG_NAMES and not manifest.has_flag(flags, defect):
            rows.append({"utterance": utterance, "split": split, "feature": name, "file": media, "reason": reason})
    return pd.DataFrame(rows)


def _labels_per_split(df: pd.DataFrame, classes: Sequence[str] | None) -> tuple[pd.DataFrame, str]:
    """Utterances per class and split, and what a class missing from valid or test means (the reader's and the
    training's logs say it too, but few read those)."""
    labelled = df[df["label"] != ""]
    if labelled.empty:
        return pd.DataFrame(), ""
    splits = [s for s in manifest.SPLITS if (labelled["split"] == s).any()]
    order = list(dict.fromkeys([*(classes or []), *sorted(labelled["label"].unique())]))
    counts = pd.crosstab(labelled["label"], labelled["split"]).reindex(index=order, columns=splits, fill_value=0)
    counts["all"] = counts.sum(axis=1)
    note = "Labelled utterances per class and split."
    for split, meaning in (("train", "no model can learn it"),
                           ("valid", "choosing the epoch (and a selection's candidate) on valid does not see it"),
                           ("test", "its test recall is not defined, and a test prediction of it is an error "
                                    "(F1 0 where it is predicted, which lowers macro F1)")):
        absent = [c for c in order if counts.at[c, split] == 0] if split in counts else []
        if absent:
            note += f" <b>No {split} utterance of {', '.join(absent)}</b>: {meaning}."
    # (the columns' axis name, "split", drew an empty column of that name in the page)
    return counts.rename_axis(index="class", columns=None).reset_index(), note


def _text_not_fully_read(attrs_by_file: dict[str, dict]) -> pd.DataFrame:
    """Per text feature file: how many utterances were truncated or are unknown tokens only (its attributes)."""
    rows = []
    for name, attrs in attrs_by_file.items():
        if attrs.get("modality") != "text":
            continue
        truncated = json.loads(attrs.get("truncated") or "{}")
        unknown_only = json.loads(attrs.get("unknown_only") or "[]")
        if truncated or unknown_only:
            rows.append({"feature": name, "truncated": len(truncated), "unknown_only": len(unknown_only)})
    return pd.DataFrame(rows)


def release_checks(checks: Sequence[dict]) -> pd.DataFrame:
    """summary.json's `checks` (the reader's comparison with the published release) as a table, differences
    first; a list value (e.g. missing dialogues) shows its first few entries."""
    def shown(value) -> str:
        if isinstance(value, list):
            return ", ".join(map(str, value[:5])) + (f" ... ({len(value)} in all)" if len(value) > 5 else "")
        return "" if value is None else str(value)

    rows = [{"check": c.get("check", ""), "ok": "yes" if c.get("ok") else "no", "expected": shown(c.get("expected")),
             "found": shown(c.get("found")), "missing": shown(c.get("missing")), "extra": shown(c.get("extra"))}
            for c in checks]
    table = pd.DataFrame(rows, columns=["check", "ok", "expected", "found", "missing", "extra"])
    table = table.drop(columns=[c for c in ("missing", "extra") if not table[c].astype(bool).any()])
    return table.sort_values("ok", kind="stable").reset_index(drop=True)


def benchmark_summary(benchmark_paths: Sequence[str | Path], root: str | Path, out_path: str | Path,
                      html_path: str | Path | None = None) -> pd.DataFrame:
    """Collect Snakemake `benchmark:` files into one table (job, wall seconds, peak RSS, CPU time). A file that is
    not there (deleted with results/ after its job ran, which Snakemake does not re-run for it) gives its job a
    row without numbers, and a warning."""
    rows, missing = [], []
    root = Path(root)
    for path in sorted(Path(p) for p in benchmark_paths):
        job = str(path.relative_to(root).with_suffix(""))
        row = {"rule": job.split("/", 1)[0], "job": job}
        if path.is_file():
            bench = pd.read_csv(path, sep="\t")
            row.update(wall_s=round(float(bench["s"].mean()), 2), max_rss_mb=round(float(bench["max_rss"].max()), 1),
                       cpu_time_s=round(float(bench["cpu_time"].mean()), 2))
        else:
            missing.append(str(path))
        rows.append(row)
    if missing:
        logger.warning("%d job(s) have no benchmark file (deleted since they ran; they are measured again when "
                       "they re-run), e.g. %s: their rows have no numbers", len(missing), missing[0])
    table = pd.DataFrame(rows, columns=["rule", "job", "wall_s", "max_rss_mb", "cpu_time_s"])
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    if html_path is not None:
        per_rule = (table.groupby("rule", sort=False)
                    .agg(jobs=("job", "size"), wall_s=("wall_s", "sum"), max_rss_mb=("max_rss_mb", "max"),
                         cpu_time_s=("cpu_time_s", "sum")).reset_index().round(2))
        write_html(html_path, html_page("Benchmarks", [
            ("Per rule", per_rule, "Summed wall and CPU seconds of the rule's jobs, largest peak RSS (MB)."),
            ("Per job", table, "")]))
    return table


# ------------------------------------------------------------------------------------- HTML for the report
# Snakemake's report shows HTML files inline and offers other tables (TSV) only as downloads, so every
# table the report should show is also written as a small self-contained HTML page.

_STYLE = ("body{font-family:sans-serif;font-size:14px;margin:1em}table{border-collapse:collapse;margin:.5em 0 1.5em}"
          "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}"
          "td:first-child,th:first-child{text-align:left}.warn{color:#b00;font-weight:bold}")


def html_page(title: str, sections: Sequence[tuple[str, pd.DataFrame | None, str]]) -> str:
    """A standalone HTML page: a title, then per section a heading, an optional note and a table."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h2>{html.escape(title)}</h2>"]
    for heading, table, note in sections:
        parts.append(f"<h3>{html.escape(heading)}</h3>")
        if note:
            parts.append(f"<p>{note}</p>")  # notes are written by this module and may hold markup
        if table is not None:
            parts.append(table.to_html(index=False, border=0, escape=True, na_rep=""))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | Path, page: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")


def _mean_std(metric: dict | None, n_runs: int | None = None) -> str:
    """'mean ± std'; '' for a metric not in the summary; with n_runs, '–' for a per-class score undefined in
    every run and '(k of N runs)' after one defined in only some."""
    if metric is None:
        return "–" if n_runs else ""
    text = f"{metric['mean']:.2f} ± {metric['std']:.2f}" if metric["n"] > 1 else f"{metric['mean']:.2f}"
    return text + (f" ({metric['n']} of {n_runs} runs)" if n_runs and metric["n"] < n_runs else "")


def _support(metric: dict | None) -> str:
    return "" if metric is None else f"{metric['mean']:.0f}"


# What else a seed's numbers depend on, besides its settings and seed (metrics.json). Seeds that differ in them are
# still averaged (each is a valid run), but the summary says so: a seed added after a `git pull` or on a machine
# with another thread count joins a mean of seeds made otherwise, which re-running all of them would not give.
PROVENANCE = {"ercpipe": "the ercpipe code (version and commit)", "torch": "torch", "threads": "the thread count",
              "devices": "the device", "inputs": "the feature and anchor files' contents"}


def mixed_provenance_note(summary: dict) -> str:
    """One sentence naming what the seeds of a summary were made with differently ('' when nothing)."""
    mixed = summary.get("mixed_provenance") or []
    if not mixed:
        return ""
    parts = []
    for key in mixed:
        groups: dict[str, list] = {}
        for p in summary["provenance"]:
            value = p.get(key)
            shown = "other contents" if key == "inputs" else (", ".join(map(str, value)) if isinstance(value, list)
                                                              else str(value))
            groups.setdefault(json.dumps(value, sort_keys=True) if key == "inputs" else shown, []).append(p["seed"])
        if key == "inputs":
            parts.append(f"{PROVENANCE[key]} ({len(groups)} versions: seeds "
                         + "; ".join(", ".join(map(str, seeds)) for seeds in groups.values()) + ")")
        else:
            parts.append(f"{PROVENANCE[key]} (" + "; ".join(f"{value}: seed(s) {', '.join(map(str, seeds))}"
                                                           for value, seeds in groups.items()) + ")")
    return ("the seeds were not all trained alike: " + ", ".join(parts) + "; the mean mixes them (to compare "
            "like with like, re-train the older seeds: --forcerun train_model, or delete their metrics.json)")


def experiment_summary_html(summary: dict, title: str) -> str:
    """The aggregate of one experiment: overall metrics per split, per-class test metrics, the protocol."""
    return html_page(title, experiment_summary_sections(summary))


def experiment_summary_sections(summary: dict) -> list[tuple[str, pd.DataFrame | None, str]]:
    """The sections of `experiment_summary_html`, for pages that show an experiment among other tables."""
    metrics, splits = summary["metrics"], [s for s in ("valid", "test") if f"{s}.accuracy" in summary["metrics"]]
    names = [("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"),
             ("weighted_precision", 'weighted precision (the VEGA paper\'s "ACC")')]
    names += [(f"unimodal_weighted_f1.{m}", f"weighted F1 of the {m} head") for m in ("t", "a", "v")
              if any(f"{s}.unimodal_weighted_f1.{m}" in metrics for s in splits)]
    overall = pd.DataFrame([{"metric": label, **{s: _mean_std(metrics.get(f"{s}.{key}")) for s in splits}}
                            for key, label in names])
    per_class = {}
    n_runs = summary["n_runs"]
    for split in splits:
        per_class[split] = pd.DataFrame([
            {"class": c, "utterances": _support(metrics.get(f"{split}.per_class.{c}.support")),
             "accuracy (recall)": _mean_std(metrics.get(f"{split}.per_class.{c}.recall"), n_runs),
             "precision": _mean_std(metrics.get(f"{split}.per_class.{c}.precision"), n_runs),
             "F1": _mean_std(metrics.get(f"{split}.per_class.{c}.f1"), n_runs)} for c in summary["classes"]])
    protocol = summary["protocol"]
    seeds = ", ".join(str(s) for s in summary["seeds"])
    note = (f"{summary['n_runs']} run(s), seeds {html.escape(seeds)}; mean ± sample std over runs, in percent. "
            f"Epoch selected on the <b>{html.escape(protocol['selection_split'])}</b> split by "
            f"{html.escape(protocol['selection_metric'])}.")
    if summary["paper_compat"]:
        note += (" <span class='warn'>paper-compat protocol: the epoch was chosen on the TEST split, as the "
                 "official code does; these test numbers are optimistic.</span>")
    mixed = mixed_provenance_note(summary)
    if mixed:
        note += f" <span class='warn'>{html.escape(mixed[0].upper() + mixed[1:])}.</span>"
    sections = [("Overall", overall, note)]
    undefined = ("– : undefined in every run (recall and F1 of a class with no utterance in the split, "
                 "precision of a class never predicted); \"k of N runs\": defined in only k runs, averaged over them.")
    sections += [(f"Per class ({split})", frame, undefined) for split, frame in per_class.items()]
    return sections
