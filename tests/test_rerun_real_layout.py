"""Re-runs on raw folders in the real layouts, declared as plain datasets (not `synthetic: true`).

The demo's generated corpus is copied to raw/meld_raw and raw/iemocap_raw and declared `format: meld` /
`format: iemocap` with a `root:`, the way a user declares the real releases. After a first full run,
each test changes one thing in a copy of that run (a fixed clip, a fixed CSV row, a changed extractor
setting, the config written in another key order) and checks the exact set of jobs Snakemake plans,
then runs them and checks the outputs.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from workflow_run import small_config, snakemake, write_config

from ercpipe import synthetic
from ercpipe.datasets.iemocap import DEFAULT_SPLIT_FILE
from ercpipe.io import manifest as manifest_io
from ercpipe.labels import IEMOCAP_CLASSES

EXPERIMENTS = {"meld_raw": "meld_raw_sdt", "iemocap_raw": "iemocap_raw_sdt"}
FEATURES = {"text": "minilm", "audio": "is10", "visual": "densenet121"}


def _config() -> dict:
    config = small_config()
    config.pop("synthetic")
    config["anchors"] = {}
    config["datasets"] = {name: {"format": name.split("_")[0], "root": f"raw/{name}", "shards": 2}
                          for name in EXPERIMENTS}
    sdt = config["experiments"]["iemocap_demo_sdt"]
    config["experiments"] = {exp: dict(copy.deepcopy(sdt), dataset=ds, features=dict(FEATURES))
                             for ds, exp in EXPERIMENTS.items()}
    for exp in config["experiments"].values():
        exp["train"]["epochs"] = 2
    return config


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The demo's corpus (its generator, at the tests' size) in the real layouts, run once: (workdir, configfile).
    Generated here rather than copied from pipeline_run, so that this module need not wait for that run."""
    workdir = tmp_path_factory.mktemp("real_layout") / "run"
    settings = small_config()["synthetic"]
    synthetic.generate_meld(workdir / "raw" / "meld_raw", settings["meld"])
    synthetic.generate_iemocap(workdir / "raw" / "iemocap_raw", settings["iemocap"], DEFAULT_SPLIT_FILE)
    configfile = write_config(workdir, _config())
    planned = _planned(snakemake(workdir, configfile, "-n").stdout)
    assert {rule for rule, _ in planned} >= {"build_manifest_shard", "build_manifest", "text_features_shard",
                                             "visual_features_shard", "train_model"}
    assert ("synthetic_corpus" not in {rule for rule, _ in planned}), "a plain dataset is never generated"
    snakemake(workdir, configfile, "--cores", "2")
    return workdir, configfile


@pytest.fixture()
def run_copy(first_run, tmp_path):
    """A copy of the first run (outputs, mtimes and Snakemake's records) to change and re-run."""
    workdir = tmp_path / "run"
    shutil.copytree(first_run[0], workdir, symlinks=True)
    return workdir, workdir / first_run[1].name


def _planned(dry_run_output: str) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job `snakemake -n` plans."""
    jobs, rule = set(), None
    for line in dry_run_output.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if match:
            rule = match.group(1)
            jobs.add((rule, ""))
        elif rule and line.strip().startswith("wildcards:"):
            jobs.discard((rule, ""))
            jobs.add((rule, line.split(":", 1)[1].strip()))
            rule = None
    return jobs


def _shard_of(workdir: Path, dataset: str, utterance_id: str) -> int:
    frame = manifest_io.read(workdir / f"features/{dataset}/manifest.tsv")
    dialogue = frame.loc[frame["utterance_id"] == utterance_id, "dialogue_id"].item()
    return next(k for k, ds in enumerate(manifest_io.dialogue_shards(frame, 2)) if dialogue in ds)


def _one_shard_jobs(dataset: str, shard: int, modalities=tuple(FEATURES)) -> set[tuple[str, str]]:
    """Everything a change inside one shard of one dataset re-runs, when it changes what `modalities` read."""
    exp = EXPERIMENTS[dataset]
    return {
        ("build_manifest_shard", f"dataset={dataset}, shard={shard}"),
        ("build_manifest", f"dataset={dataset}"),
        ("manifest_issues", f"dataset={dataset}"),
        *{("modality_manifest_shard", f"dataset={dataset}, modality={m}, shard={shard}") for m in modalities},
        *({("utterance_audio", f"dataset={dataset}, shard={shard}")} if "audio" in modalities else set()),
        *{(f"{m}_features_shard", f"dataset={dataset}, setting={s}, shard={shard}") for m, s in FEATURES.items()
          if m in modalities},
        *{("merge_features", f"dataset={dataset}, modality={m}, setting={s}") for m, s in FEATURES.items()},
        ("feature_coverage", f"dataset={dataset}"),
        ("train_model", f"dataset={dataset}, experiment={exp}, seed=0"),
        ("aggregate_experiment", f"dataset={dataset}, experiment={exp}"),
        ("benchmark_summary", ""),
        ("all", ""),
    }


def _features(workdir: Path, dataset: str, modality: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    with h5py.File(workdir / f"features/{dataset}/{modality}/{FEATURES[modality]}.h5") as f:
        ids = [u.decode() for u in f["utterance_id"][()]]
        return ids, f["features"][()], f["present"][()]


def _rows_of_other_shards(workdir: Path, dataset: str, shard: int) -> list[str]:
    frame = manifest_io.read(workdir / f"features/{dataset}/manifest.tsv")
    others = [d for k, ds in enumerate(manifest_io.dialogue_shards(frame, 2)) if k != shard for d in ds]
    return frame.loc[frame["dialogue_id"].isin(others), "utterance_id"].tolist()


def test_first_run_flags_the_defects_and_is_complete(first_run):
    workdir, configfile = first_run
    issues = pd.read_csv(workdir / "features/meld_raw/issues.tsv", sep="\t")
    assert {"missing_video", "corrupt_video", "no_audio_stream"} <= set(issues["reason"])
    for name in EXPERIMENTS:
        summary = json.loads((workdir / f"features/{name}/summary.json").read_text())
        assert summary["utterances"] == len(manifest_io.read(workdir / f"features/{name}/manifest.tsv")) > 0
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n").stdout


def test_a_fixed_clip_reruns_its_shard_only(run_copy):
    workdir, configfile = run_copy
    issues = pd.read_csv(workdir / "features/meld_raw/issues.tsv", sep="\t")
    corrupt = issues.loc[issues["reason"] == "corrupt_video"].iloc[0]
    clip = workdir / corrupt["detail"].split(":")[0]
    shard = _shard_of(workdir, "meld_raw", corrupt["utterance_id"])
    before = {m: _features(workdir, "meld_raw", m) for m in FEATURES}
    # The fix: a good clip of the same dialogue in place of the corrupt one.
    good = next(p for p in sorted(clip.parent.glob(clip.name.split("_utt")[0] + "_utt*.mp4")) if p != clip)
    shutil.copyfile(good, clip)

    # The clip holds the audio and the video: their extraction re-runs, the transcript's does not.
    assert _planned(snakemake(workdir, configfile, "-n").stdout) == _one_shard_jobs("meld_raw", shard,
                                                                                   ("audio", "visual"))
    snakemake(workdir, configfile, "--cores", "2")

    issues = pd.read_csv(workdir / "features/meld_raw/issues.tsv", sep="\t")
    assert corrupt["utterance_id"] not in set(issues.loc[issues["reason"] == "corrupt_video", "utterance_id"])
    ids, visual, present = _features(workdir, "meld_raw", "visual")
    assert present[ids.index(corrupt["utterance_id"])] and not before["visual"][2][ids.index(corrupt["utterance_id"])]
    # The other shard's rows were not recomputed: identical features.
    others = [ids.index(u) for u in _rows_of_other_shards(workdir, "meld_raw", shard)]
    for modality in FEATURES:
        np.testing.assert_array_equal(_features(workdir, "meld_raw", modality)[1][others], before[modality][1][others])
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n").stdout


def test_a_fixed_csv_row_reruns_its_shard_only(run_copy):
    workdir, configfile = run_copy
    csv_path = workdir / "raw/meld_raw/train_sent_emo.csv"
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    row = table.iloc[0]
    uid = f"train_dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}"
    shard = _shard_of(workdir, "meld_raw", uid)
    before = _features(workdir, "meld_raw", "text")
    table.loc[0, "Utterance"] = "I fixed this transcript, and it is completely different now."
    table.to_csv(csv_path, index=False)
    audio_before, visual_before = (_features(workdir, "meld_raw", m) for m in ("audio", "visual"))

    # A transcript fix re-runs the shard's text extraction only: its clips did not change (the audio and the
    # faces used to be extracted again too).
    assert _planned(snakemake(workdir, configfile, "-n").stdout) == _one_shard_jobs("meld_raw", shard, ("text",))
    snakemake(workdir, configfile, "--cores", "2")
    for modality, before_media in (("audio", audio_before), ("visual", visual_before)):
        after = _features(workdir, "meld_raw", modality)
        assert after[0] == before_media[0]
        np.testing.assert_array_equal(after[1], before_media[1])

    frame = manifest_io.read(workdir / "features/meld_raw/manifest.tsv")
    assert frame.loc[frame["utterance_id"] == uid, "text"].item() == table.loc[0, "Utterance"]
    ids, text, _ = _features(workdir, "meld_raw", "text")
    assert not np.allclose(text[ids.index(uid)], before[1][before[0].index(uid)])
    others = [ids.index(u) for u in _rows_of_other_shards(workdir, "meld_raw", shard)]
    np.testing.assert_array_equal(text[others], before[1][others])
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n").stdout


def test_a_changed_extractor_setting_reruns_that_extractor_and_training(run_copy):
    workdir, configfile = run_copy
    config = yaml.safe_load(configfile.read_text())
    config["features"]["audio"]["is10"]["feature_set"] = "eGeMAPSv02"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    expected = set()
    for ds, exp in EXPERIMENTS.items():
        expected |= {("audio_features_shard", f"dataset={ds}, setting=is10, shard={k}") for k in range(2)}
        expected |= {("merge_features", f"dataset={ds}, modality=audio, setting=is10"),
                     ("feature_coverage", f"dataset={ds}"), ("train_model", f"dataset={ds}, experiment={exp}, seed=0"),
                     ("aggregate_experiment", f"dataset={ds}, experiment={exp}")}
    expected |= {("benchmark_summary", ""), ("all", "")}

    assert _planned(snakemake(workdir, configfile, "-n").stdout) == expected
    snakemake(workdir, configfile, "--cores", "2")

    for ds in EXPERIMENTS:
        with h5py.File(workdir / f"features/{ds}/audio/is10.h5") as f:
            assert f["features"].shape[1] == 88  # eGeMAPSv02 functionals
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n").stdout


def _reordered(value):
    if isinstance(value, dict):
        return {key: _reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(item) for item in value]
    return value


def test_the_same_config_in_another_key_order_reruns_nothing(first_run, tmp_path):
    workdir, configfile = first_run
    config = yaml.safe_load(configfile.read_text())
    reordered = tmp_path / "reordered.yaml"
    reordered.write_text(yaml.safe_dump(_reordered(config), sort_keys=False))
    assert list(yaml.safe_load(reordered.read_text())) == list(reversed(list(config)))
    result = snakemake(workdir, reordered, "-n")
    assert "Nothing to be done" in result.stdout, result.stdout[-3000:]


def test_the_roots_written_as_absolute_paths_rerun_nothing(first_run, tmp_path):
    """root: /abs/project/raw/x is raw/x: it used to put other media paths into the manifests and re-extract
    every shard's audio and faces."""
    workdir, configfile = first_run
    config = yaml.safe_load(configfile.read_text())
    link = tmp_path / "link"  # the project spelled through a link ($PWD where /home links to /gpfs/home)
    link.symlink_to(workdir)
    for base, name in ((workdir, "absolute.yaml"), (link, "linked.yaml")):
        for dataset, original in zip(config["datasets"].values(),
                                     yaml.safe_load(configfile.read_text())["datasets"].values()):
            dataset["root"] = str(base / original["root"])
        result = snakemake(workdir, write_config(tmp_path, config, name), "-n")
        assert "Nothing to be done" in result.stdout, (name, result.stdout[-3000:])


def test_removing_one_dialogues_files_reruns_only_the_shards_whose_rows_change(run_copy):
    """Every shard job used to get all of the dataset's text files as inputs, so removing (or restoring) one
    dialogue's transcription and EmoEvaluation files re-ran every shard's manifest and extraction jobs."""
    workdir, configfile = run_copy
    frame = manifest_io.read(workdir / "features/iemocap_raw/manifest.tsv")
    before = manifest_io.dialogue_shards(frame, 2)
    # One whose removal leaves the first shard's dialogues where they are (shards are contiguous runs of nearly
    # equal utterance counts, so a removal can also move a boundary; README).
    dialogue = next(d for d in before[1]
                    if manifest_io.dialogue_shards(frame[frame["dialogue_id"] != d], 2)[0] == before[0])
    session = f"Session{int(dialogue[3:5])}"
    for part in ("transcriptions", "EmoEvaluation"):
        (workdir / f"raw/iemocap_raw/{session}/dialog/{part}/{dialogue}.txt").unlink()
    planned = _planned(snakemake(workdir, configfile, "-n").stdout)
    assert ("build_manifest_shard", "dataset=iemocap_raw, shard=1") in planned
    assert not {job for job in planned if job[1].endswith("shard=0") and "iemocap_raw" in job[1]}, planned
    assert not {job for job in planned if "meld_raw" in job[1]}


def test_a_reversed_evaluation_time_re_extracts_the_faces_not_the_sentence_audio(run_copy):
    """IEMOCAP's audio is the whole sentence WAV, whatever the EmoEvaluation times say: a bad_time flag (added,
    or removed by the fix) used to re-run the shard's audio extraction too, for identical features."""
    workdir, configfile = run_copy
    frame = manifest_io.read(workdir / "features/iemocap_raw/manifest.tsv")
    row = frame.iloc[0]
    session = f"Session{int(row['dialogue_id'][3:5])}"
    emo = workdir / f"raw/iemocap_raw/{session}/dialog/EmoEvaluation/{row['dialogue_id']}.txt"
    text = emo.read_text()
    header = re.search(rf"^\[(\d+\.\d+) - (\d+\.\d+)\]\t{row['utterance_id']}\t", text, re.M)
    assert header, row["utterance_id"]
    start, end = header.groups()
    emo.write_text(text.replace(header.group(0), header.group(0).replace(f"[{start} - {end}]", f"[{end} - {start}]")))
    planned = _planned(snakemake(workdir, configfile, "-n").stdout)
    assert planned == _one_shard_jobs("iemocap_raw", _shard_of(workdir, "iemocap_raw", row["utterance_id"]),
                                      ("visual",)), planned


def test_a_rejected_row_reruns_only_the_issues_and_the_summary(run_copy):
    """A duplicate transcript line is rejected (recorded in issues.tsv) and changes no manifest row: it used to
    leave issues.tsv and summary.json as they were, since the job writing them re-ran on the manifest's digest."""
    workdir, configfile = run_copy
    transcript = sorted((workdir / "raw/iemocap_raw").glob("Session*/dialog/transcriptions/*.txt"))[0]
    first = next(line for line in transcript.read_text().splitlines() if line.startswith(transcript.stem + "_"))
    uid = first.split()[0]
    with transcript.open("a") as f:
        f.write(first.split(":", 1)[0] + ": the same turn, typed twice.\n")
    manifest_before = (workdir / "features/iemocap_raw/manifest.tsv").read_bytes()

    assert _planned(snakemake(workdir, configfile, "-n").stdout) == {
        ("manifest_issues", "dataset=iemocap_raw"), ("feature_coverage", "dataset=iemocap_raw"), ("all", "")}
    snakemake(workdir, configfile, "--cores", "2")
    issues = pd.read_csv(workdir / "features/iemocap_raw/issues.tsv", sep="\t")
    duplicate = issues.loc[issues["reason"] == "duplicate_transcript_line"]
    assert duplicate["utterance_id"].tolist() == [uid]
    assert duplicate["line"].item() == len(transcript.read_text().splitlines())
    summary = json.loads((workdir / "features/iemocap_raw/summary.json").read_text())
    assert summary["rejected_counts"]["duplicate_transcript_line"] == 1
    assert (workdir / "features/iemocap_raw/manifest.tsv").read_bytes() == manifest_before
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n").stdout


def test_a_raw_file_or_setting_the_reader_refuses_stops_a_finished_run_too(run_copy):
    """Snakemake took the reader's error, raised while the DAG was built, for "no job makes this file" when the
    manifest existed: a finished run said "Nothing to be done" and kept the old results. Reading every dataset
    at parse time and raising there held up every other dataset and --unlock too."""
    workdir, configfile = run_copy  # (a setting the reader cannot use is a config error: tests/test_config.py)
    csv_path = workdir / "raw/meld_raw/train_sent_emo.csv"
    csv_path.write_text(csv_path.read_text().replace("Emotion", "Feeling", 1))  # a raw file the reader refuses
    shards = sorted((workdir / "features/meld_raw/manifest_shards").rglob("*.tsv"))
    result = snakemake(workdir, configfile, "--cores", "1", check=False)
    assert result.returncode != 0 and "Nothing to be done" not in result.stdout
    assert "dataset meld_raw: the raw data cannot be read" in result.stdout and "Emotion" in result.stdout
    assert sorted((workdir / "features/meld_raw/manifest_shards").rglob("*.tsv")) == shards  # no job ran
    # Nothing else is held up: the other dataset's files, --unlock.
    other = f"results/iemocap_raw/{EXPERIMENTS['iemocap_raw']}/summary.json"
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n", other).stdout
    assert snakemake(workdir, configfile, "--unlock", check=False).returncode == 0
    csv_path.write_text(csv_path.read_text().replace("Feeling", "Emotion", 1))  # fixed: back to as it was
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n").stdout


def test_face_selection_keys_rerun_the_visual_extraction_not_the_shards_or_text_and_audio(run_copy):
    """`sides` (IEMOCAP) and `face_selection` only steer which face the visual extractor takes; they used to be
    part of every shard's digest, re-running every manifest shard and the text and audio extraction, and later
    of the join's params, re-running the join and the text and audio merges."""
    workdir, configfile = run_copy
    config = yaml.safe_load(configfile.read_text())
    config["datasets"]["iemocap_raw"]["sides"] = {"F": "right", "M": "left"}
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    rules = {rule for rule, wildcards in _planned(snakemake(workdir, configfile, "-n").stdout)
             if "iemocap_raw" in wildcards}
    assert {"visual_features_shard", "train_model", "manifest_issues"} <= rules  # summary.json records the sides
    # Nor the join (it used to hold them in its params; no manifest row depends on them) and so the text and audio
    # merges.
    assert not rules & {"build_manifest_shard", "build_manifest", "text_features_shard", "audio_features_shard",
                        "utterance_audio"}
    assert {wildcards for rule, wildcards in _planned(snakemake(workdir, configfile, "-n").stdout)
            if rule == "merge_features" and "iemocap_raw" in wildcards} == {
        "dataset=iemocap_raw, modality=visual, setting=densenet121"}


def test_the_same_config_with_every_default_written_out_reruns_nothing(first_run, tmp_path):
    """Params used to hold the keys as written, so spelling out a preset's value (or an extractor's default)
    re-ran the training (or the extraction) though nothing it computes had changed."""
    from ercpipe.io.features import expected_settings
    from ercpipe.train.presets import inactive_keys, resolve_experiment

    workdir, configfile = first_run
    config = yaml.safe_load(configfile.read_text())
    for modality, settings in config["features"].items():
        for name, setting in settings.items():
            settings[name] = expected_settings(modality, setting)
    # Datasets: the readers' defaults and every modality.
    config["datasets"]["meld_raw"].update(probe_media=True, modalities=["visual", "audio", "text"])
    config["datasets"]["iemocap_raw"].update(sides={"F": "left", "M": "right"}, relabel={},
                                             modalities=["text", "audio", "visual"], classes=list(IEMOCAP_CLASSES),
                                             split_file=str(DEFAULT_SPLIT_FILE))
    for name, experiment in config["experiments"].items():
        resolved = resolve_experiment(experiment)
        assert resolved["train"] != experiment["train"]  # defaults were left out before
        # Keys the other settings make inactive (AdamW has no momentum; no scheduler, no warm-up) may change too.
        assert {"train.momentum", "train.warmup_fraction"} <= set(inactive_keys(resolved))
        resolved["train"].update(momentum=0.5, warmup_fraction=0.25)
        config["experiments"][name] = resolved
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(workdir, explicit, "-n")
    assert "Nothing to be done" in result.stdout, result.stdout[-3000:]

    # A value that differs from the preset's still re-runs that experiment's training, and only that.
    exp = EXPERIMENTS["meld_raw"]
    config["experiments"][exp]["train"]["lr"] *= 2
    explicit.write_text(yaml.safe_dump(config, sort_keys=False))
    assert _planned(snakemake(workdir, explicit, "-n").stdout) == {
        ("train_model", f"dataset=meld_raw, experiment={exp}, seed=0"),
        ("aggregate_experiment", f"dataset=meld_raw, experiment={exp}"),
        ("benchmark_summary", ""), ("all", "")}


def test_a_relabelling_re_extracts_nothing(run_copy):
    """`relabel` changes labels, which no extractor reads; it used to re-run every shard's extraction (hours of
    roberta-large and MTCNN on a whole IEMOCAP to try {exc: hap})."""
    workdir, configfile = run_copy
    config = yaml.safe_load(configfile.read_text())
    config["datasets"]["iemocap_raw"]["relabel"] = {"exc": "hap"}
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    planned = _planned(snakemake(workdir, configfile, "-n").stdout)
    rules = {rule for rule, wildcards in planned if "iemocap_raw" in wildcards}
    assert {"build_manifest_shard", "build_manifest", "train_model"} <= rules
    assert not rules & {"modality_manifest_shard", "utterance_audio", "text_features_shard", "audio_features_shard",
                        "visual_features_shard"}
    assert not {job for job in planned if "meld_raw" in job[1]}


def test_a_media_only_setting_re_extracts_no_text(run_copy):
    """`probe_media` decides which clips are opened (their corrupt flags), nothing of the transcripts: it used to
    re-run every shard's text extraction too."""
    workdir, configfile = run_copy
    config = yaml.safe_load(configfile.read_text())
    config["datasets"]["meld_raw"]["probe_media"] = False
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    rules = {rule for rule, wildcards in _planned(snakemake(workdir, configfile, "-n").stdout)
             if "meld_raw" in wildcards}
    assert {"audio_features_shard", "visual_features_shard"} <= rules
    assert "text_features_shard" not in rules


def test_deleting_the_results_folder_retrains_and_extracts_nothing(run_copy):
    """"Delete my results and train again": the extraction jobs' benchmark files live in results/benchmarks/ and
    were inputs of the benchmark table, so every extraction re-ran for them."""
    workdir, configfile = run_copy
    shutil.rmtree(workdir / "results")
    planned = _planned(snakemake(workdir, configfile, "-n").stdout)
    assert planned == {*{("train_model", f"dataset={ds}, experiment={exp}, seed=0") for ds, exp in EXPERIMENTS.items()},
                       *{("aggregate_experiment", f"dataset={ds}, experiment={exp}") for ds, exp in EXPERIMENTS.items()},
                       *{("feature_coverage", f"dataset={ds}") for ds in EXPERIMENTS},
                       ("benchmark_summary", ""), ("all", "")}
    snakemake(workdir, configfile, "--cores", "2")
    table = pd.read_csv(workdir / "results" / "benchmarks.tsv", sep="\t")
    measured = table.dropna(subset=["wall_s"])
    assert set(measured["rule"]) == {"train_model"} and len(measured) == len(EXPERIMENTS)
    assert {"text_features", "audio_features", "visual_features"} <= set(table["rule"])  # listed, without numbers
    assert "job(s) have no benchmark file" in (workdir / "logs" / "benchmark_summary.log").read_text()
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n").stdout


def test_a_local_model_replaced_under_the_same_path_reruns_what_read_it(tmp_path):
    """A model the config names by path (here a text model directory; weights and CLIP checkpoint files go the same
    way) is read by the jobs but is no input: another model copied under the same path used to re-run nothing and
    leave the old features and results in place."""
    from workflow_run import planned_jobs

    from ercpipe.io import features as feature_io
    from ercpipe.testing.tiny_models import write_tiny_roberta

    lines = ["dialogue_id,utterance_id,split,speaker,label,text"]
    for d, split in enumerate(["train"] * 4 + ["valid", "test"]):
        for u in range(3):
            label = ("calm", "angry")[(d + u) % 2]
            lines.append(f"d{d},d{d}_u{u},{split},{'AB'[u % 2]},{label},{'so very' if label == 'angry' else 'quite'} "
                         f"{label} today {d} {u}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    texts = [line.rsplit(",", 1)[1] for line in lines[1:]]
    write_tiny_roberta(tmp_path / "models" / "tiny", texts * 3, hidden_size=16, layers=1, seed=0)
    config = write_config(tmp_path, {
        "datasets": {"tv": {"format": "csv", "manifest": "m.csv", "classes": ["calm", "angry"],
                            "modalities": ["text"]}},
        "features": {"text": {"tiny": {"model": "models/tiny"}}},
        "experiments": {"tv_sdt": {"dataset": "tv", "features": {"text": "tiny"}, "preset": "demo",
                                   "anchors": None, "loss": {"clip_loss": False}, "seeds": [0],
                                   "train": {"epochs": 1}}}})
    target = "features/tv/text/tiny.h5"  # the features alone: training re-runs on them as usual
    snakemake(tmp_path, config, "--cores", "1", target)
    assert planned_jobs(snakemake(tmp_path, config, "-n", target).stdout) == {}
    before = feature_io.read(tmp_path / target).features

    write_tiny_roberta(tmp_path / "models" / "tiny", texts * 3, hidden_size=16, layers=1, seed=1)  # another model
    jobs = planned_jobs(snakemake(tmp_path, config, "-n", target).stdout)
    assert jobs == {"text_features_shard": 1, "merge_features": 1}  # the data did not change: no manifest job
    snakemake(tmp_path, config, "--cores", "1", target)
    assert not np.allclose(feature_io.read(tmp_path / target).features, before)
    assert planned_jobs(snakemake(tmp_path, config, "-n", target).stdout) == {}

    # A shard job that fails (here a damaged weights file; on a cluster: memory, time, a full disk) after such a
    # change: Snakemake removes the shard, and the merged file of the earlier model used to stay, so the next run
    # planned nothing for the features ("Nothing to be done") once the model was mended.
    after = feature_io.read(tmp_path / target).features
    weights = tmp_path / "models" / "tiny" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    failed = snakemake(tmp_path, config, "--cores", "1", target, check=False)
    assert failed.returncode != 0 and "model.safetensors" in failed.stdout
    assert not (tmp_path / target).exists()
    write_tiny_roberta(tmp_path / "models" / "tiny", texts * 3, hidden_size=16, layers=1, seed=2)
    assert planned_jobs(snakemake(tmp_path, config, "-n", target).stdout) == {"text_features_shard": 1,
                                                                             "merge_features": 1}
    snakemake(tmp_path, config, "--cores", "1", target)
    assert not np.allclose(feature_io.read(tmp_path / target).features, after)
