"""Config validation: a wrong key, type or path stops Snakemake before any job, naming the key."""
from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ercpipe import config as pipeline_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


@pytest.fixture()
def demo_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def dry_run(config: dict, tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return subprocess.run([SNAKEMAKE, "-n", "--configfile", str(cfg), "-d", str(tmp_path), "-s",
                           str(REPO / "Snakefile"), *options], capture_output=True, text=True, timeout=300)


def test_demo_config_is_valid(demo_config):
    pipeline_config.validate_schema(demo_config, SCHEMA)
    pipeline_config.check(demo_config, REPO)


def test_the_schema_takes_every_clip_key_the_code_takes(demo_config):
    """docs/anchors.md tells users with a local file of OpenAI weights to set quick_gelu: true; the schema
    used to reject the key."""
    from ercpipe.clip_setting import DEFAULT_CLIP, ENCODING_KEYS

    clip = demo_config["anchors"]["demo_faces"]["clip"]
    for key, value in {"quick_gelu": True, "batch_size": 8}.items():
        clip[key] = value
    assert set(clip) == set(DEFAULT_CLIP) | set(ENCODING_KEYS)
    pipeline_config.validate_schema(demo_config, SCHEMA)
    clip["quick_gelu"] = "yes"
    with pytest.raises(pipeline_config.ConfigError, match="anchors.demo_faces.clip.quick_gelu: 'yes' is not of type"):
        pipeline_config.validate_schema(demo_config, SCHEMA)


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["datasets"]["meld_demo"].update(shardz=3), "datasets.meld_demo: Additional properties"),
    (lambda c: c["datasets"]["meld_demo"].update(shards="two"), "datasets.meld_demo.shards: 'two' is not of type"),
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(seeds=[]), "experiments.iemocap_demo_sdt.seeds"),
    (lambda c: c.update(use_gpu="yes"), "use_gpu: 'yes' is not of type 'boolean'"),
    (lambda c: c.update(use_gpu="true"), "use_gpu: 'true' is not of type 'boolean' .on the command line Snakemake "
                                         "reads only True and False as booleans: --config use_gpu=True"),
    # A nested key cannot be set with --config: the hint no longer sends the user to a command that fails.
    (lambda c: c["datasets"]["iemocap_demo"].update(synthetic="True"),
     "datasets.iemocap_demo.synthetic: 'True' is not of type 'boolean' (write true without quotes; a nested key "
     "cannot be set with --config"),
    (lambda c: c.update(selections={"best": {"candidates": ["iemocap_demo_sdt", "iemocap_demo_sdt_vega"],
                                             "metric": "test.weighted_f1"}}), "selections.best.metric"),
    (lambda c: c.update(selections={"best": {"candidates": ["iemocap_demo_sdt"]}}), "selections.best.candidates"),
    # A value with several allowed forms said only "not valid under any of the given schemas": the closest form's
    # problem is named (a misspelt key, a value out of range).
    (lambda c: c["datasets"]["meld_demo"].update(valid_split={"fraction": 0.1, "sed": 3}),
     "datasets.meld_demo.valid_split: {'fraction': 0.1, 'sed': 3} is not valid under any of the given schemas "
     ".closest form: Additional properties are not allowed .'sed' was unexpected.."),
    (lambda c: c["datasets"]["meld_demo"].update(valid_split={"fraction": 0.1, "seed": -1}),
     ".closest form: -1 is less than the minimum of 0."),
])
def test_schema_errors_name_the_key(demo_config, mutate, expected):
    bad = copy.deepcopy(demo_config)
    mutate(bad)
    with pytest.raises(pipeline_config.ConfigError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        pipeline_config.validate_schema(bad, SCHEMA)


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(dataset="nope"),
     "experiments.iemocap_demo_sdt.dataset: unknown dataset 'nope'"),
    (lambda c: c["experiments"]["iemocap_demo_sdt"]["features"].update(text="roberta"),
     "experiments.iemocap_demo_sdt.features.text: unknown setting 'roberta'"),
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(anchors="missing_set"),
     "experiments.iemocap_demo_sdt.anchors: unknown anchor set"),
    (lambda c: c["datasets"].update(real={"format": "meld", "root": "raw/does/not/exist"}),
     "datasets.real.root: folder raw/does/not/exist does not exist"),
    # A copy of the demo's config given a real root trained on the generated corpus, without a word.
    (lambda c: c["datasets"]["iemocap_demo"].update(root="raw/IEMOCAP_full_release"),
     r"datasets.iemocap_demo: synthetic: true generates a corpus under raw/synthetic/, so root "
     r"'raw/IEMOCAP_full_release' is not read; remove synthetic: true to use the raw data there"),
    # JSON Schema's integer takes 1.0: Snakemake then looked for a folder seed1.0 that no rule makes.
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(seeds=[0, 1.0]),
     r"experiments.iemocap_demo_sdt.seeds: 1.0 is not a whole number; write seeds as 0, 1, ... \(not 1.0\)"),
    (lambda c: c["datasets"].update(mine={"format": "csv", "classes": ["a", "b"]}),
     "datasets.mine.manifest: required for format csv"),
    (lambda c: c["datasets"].update(mine={"format": "csv", "manifest": "m.csv", "classes": ["a", "b"],
                                          "valid_split": {"standard": "iemocap"}}),
     r"datasets.mine.valid_split.standard: only an IEMOCAP feature pickle has standard validation dialogues"),
    (lambda c: c["datasets"]["meld_demo"].update(valid_split={"fraction": 0.1, "seed": 0}),
     r"datasets.meld_demo.valid_split: format meld has its own validation split; valid_split is for datasets "
     r"that may lack one \(vega_pickle, sdt_pickle, csv\)"),
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(train={"learning_rate": 1e-3}),
     "experiments.iemocap_demo_sdt: experiment key train.learning_rate: unknown key"),
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(model={"dropout": 1.5}),
     "experiments.iemocap_demo_sdt: experiment key model.dropout: must be a number"),
    (lambda c: c["experiments"]["iemocap_demo_sdt_vega"].update(anchors=None),
     r"experiments.iemocap_demo_sdt_vega.anchors: null, but preset 'demo' trains the VEGA branch .*needs anchors: "
     r"name an anchor set \(anchors: \{<name>: ...\} with images: a folder with one sub-folder of face images per "
     r"class .*, mine: \{dataset: .* or official: a 35_anchor.pt \(the released file holds IEMOCAP's and MELD's "
     r"classes only; `ercpipe export-anchors` writes one for other classes from an encoded set\) \(docs/anchors.md\)"
     r"\), or train SDT with loss: \{clip_loss: false\}"),
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(anchors="demo_faces"),
     "experiments.iemocap_demo_sdt.anchors: 'demo_faces' is never used"),
    (lambda c: c.update(selections={"best": {"candidates": ["iemocap_demo_sdt", "nope"]}}),
     r"selections.best.candidates: unknown experiment\(s\) \['nope'\]"),
    # Names of the workflow's own files: Snakemake stopped on a ChildIOException naming no key.
    (lambda c: c["experiments"].update({"coverage.html": c["experiments"].pop("iemocap_demo_sdt")}),
     r"experiments.coverage.html: the name is taken by results/<dataset>/coverage.html; rename it"),
    (lambda c: c["experiments"].update(export=c["experiments"].pop("iemocap_demo_sdt")),
     r"experiments.export: the name is taken by results/<dataset>/export/ \(exports:\); rename it"),
    (lambda c: c["datasets"].update({"benchmarks.html": c["datasets"]["meld_demo"]}),
     r"datasets.benchmarks.html: the name is taken by results/benchmarks.html; rename it"),
    (lambda c: c.update(selections={"inner": {"candidates": ["iemocap_demo_sdt", "iemocap_demo_sdt_vega"]},
                                    "outer": {"candidates": ["inner", "iemocap_demo_sdt"]}}),
     r"selections.outer.candidates: \['inner'\] name selections; a selection's candidates are experiments"),
    (lambda c: c.update(selections={"best": {"candidates": ["iemocap_demo_sdt", "meld_demo_sdt_vega"]}}),
     "selections.best.candidates: the candidates train on different datasets"),
    (lambda c: c.update(selections={"iemocap_demo_sdt": {"candidates": ["iemocap_demo_sdt", "iemocap_demo_sdt_vega"]}}),
     "selections.iemocap_demo_sdt: an experiment has the same name"),
    (lambda c: c.update(selections={"best": {"candidates": ["iemocap_demo_sdt", "iemocap_demo_sdt"]}}),
     "selections.best.candidates: candidates must be distinct"),
    # Refused by the selection job only after the candidates had trained (hours with a real recipe).
    (lambda c: c["experiments"]["iemocap_demo_sdt"]["train"].update(paper_compat=True) or c.update(
        selections={"best": {"candidates": ["iemocap_demo_sdt_vega", "iemocap_demo_sdt"]}}),
     r"selections.best.candidates: \['iemocap_demo_sdt'\] set train.paper_compat: true, so they choose their epochs "
     "on the test split"),
    # Extractor settings: resolved through ercpipe.features.settings (the schema takes any object there).
    (lambda c: c["features"]["audio"]["is10"].update(feature_set="IS11"),
     r"features.audio.is10.feature_set: audio feature_set 'IS11' is not one of \['ComParE_2016'"),
    (lambda c: c["features"]["text"]["minilm"].update(poolin="mean"),
     r"features.text.minilm.poolin: unknown key; did you mean pooling\?"),
    (lambda c: c["features"]["text"]["minilm"].update(context={"previos": 1}),
     r"features.text.minilm.context.previos: unknown key; did you mean previous\?"),
    (lambda c: c["features"]["text"]["minilm"].update(finetune={"epochs": 0}),
     "features.text.minilm.finetune.epochs: text fine-tuning setting epochs must be an integer >= 1, got 0"),
    (lambda c: c["features"]["text"]["minilm"].update(max_length="long"),
     "features.text.minilm.max_length: text setting max_length must be an integer >= 4, got 'long'"),
    (lambda c: c["features"]["text"]["minilm"].pop("model"), "features.text.minilm.model: required"),
    (lambda c: c["features"]["visual"]["densenet121"].update(fps=0),
     "features.visual.densenet121.fps: visual setting fps must be a finite positive number, got 0"),
    (lambda c: c["features"]["visual"]["densenet121"].update(fps=float("nan")),  # sampled every frame
     "features.visual.densenet121.fps: visual setting fps must be a finite positive number, got nan"),
    (lambda c: c["features"]["visual"]["densenet121"].update(fps=float("inf")),  # an OverflowError in -n
     "features.visual.densenet121.fps: visual setting fps must be a finite positive number, got inf"),
    (lambda c: c["features"]["visual"]["densenet121"].update(fps=10 ** 400),  # OverflowError in isfinite
     "features.visual.densenet121.fps: visual setting fps must be a finite positive number, got 1000"),
    (lambda c: c["features"]["visual"]["densenet121"].update(thresholds=[True, 0.7, 0.7]),
     "features.visual.densenet121.thresholds: visual setting thresholds must be three numbers in"),
    (lambda c: c["features"]["visual"]["densenet121"].update(image_size=8),
     "features.visual.densenet121.image_size: visual setting image_size must be at least 16 pixels, got 8"),
    (lambda c: c["features"]["visual"]["densenet121"].update(zzz=1),
     "features.visual.densenet121.zzz: unknown key; known keys: backbone, batch_size, "),
    # Names become parts of paths.
    (lambda c: c["datasets"].update({"../evil": c["datasets"]["meld_demo"]}),
     r"datasets.../evil: this name becomes part of file paths; use letters, digits"),
    (lambda c: c["experiments"].update({"a/b": c["experiments"]["iemocap_demo_sdt"]}), r"experiments.a/b: .*e.g. a_b"),
    (lambda c: c["features"]["text"].update({"mini lm": c["features"]["text"]["minilm"]}),
     r"features.text.mini lm: this name becomes part of file paths.*e.g. mini_lm"),
    (lambda c: c["datasets"].update({"demo(1)": c["datasets"]["meld_demo"]}), r"datasets.demo\(1\): .*e.g. demo_1"),
    # YAML reads 2024 or yes as a number or a bool: the name crashed sorting and matching with a bare TypeError.
    (lambda c: c["datasets"].update({2024: c["datasets"]["meld_demo"]}),
     r"datasets.2024: YAML reads this name as int 2024, not as text; quote it \(\"2024\":\)"),
    (lambda c: c["anchors"].update({True: c["anchors"]["demo_faces"]}), r"anchors.True: YAML reads this name as bool"),
    # "null" in quotes was taken for an open_clip tag, and failed only in the anchor job.
    (lambda c: c["anchors"]["demo_faces"]["clip"].update(pretrained="null"),
     r"anchors.demo_faces.clip: clip pretrained 'null' is text, not null: write null without quotes"),
    # An infinite number passed every range check (training would produce NaNs).
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(train={"lr": float("inf")}),
     r"experiments.iemocap_demo_sdt: experiment key train.lr: must be a number > 0.0 \(got inf\)"),
    # Class weights the dataset's classes cannot take, before any feature is made.
    (lambda c: c["experiments"]["iemocap_demo_sdt"].update(loss={"class_weights": [1.0, 2.0]}),
     r"experiments.iemocap_demo_sdt.loss.class_weights: 2 weights for the dataset's 6 classes"),
    (lambda c: (c["datasets"].update(mine={"format": "csv", "manifest": "README.md", "classes": ["calm", "mad"]}),
                c["experiments"]["iemocap_demo_sdt"].update(dataset="mine", loss={"class_weights": "paper"})),
     r"experiments.iemocap_demo_sdt.loss.class_weights: 'paper' .* exists only for IEMOCAP's and MELD's classes"),
    # Synthetic corpus settings are checked before any job, as the synthetic_corpus job would.
    (lambda c: c["synthetic"]["iemocap"].update(dialogs={"train": 3}), r"unknown setting 'synthetic.iemocap.dialogs'"),
    # The face rule, before the manifest jobs run (it used to fail inside the visual job, not naming the key).
    (lambda c: c["datasets"]["iemocap_demo"].update(face_selection={"mode": "side"}),
     r"datasets.iemocap_demo.face_selection: face_selection mode 'side' needs sides"),
    (lambda c: c["datasets"]["iemocap_demo"].update(face_selection={"mode": "side", "sides": {"F": "left"}}),
     r"datasets.iemocap_demo.face_selection: IEMOCAP's speakers end in F or M; give a side for both"),
    (lambda c: c["datasets"]["iemocap_demo"].update(sides={"F": "right", "M": "left"},
                                                    face_selection={"mode": "largest_central"}),
     r"datasets.iemocap_demo.sides: face_selection is given too, and it decides alone"),
    (lambda c: c["datasets"]["iemocap_demo"].update(sides={"F": "left", "M": "left"}),
     r"datasets.iemocap_demo.sides: both speakers sit on the left half, so both would get the same face"),
    (lambda c: c["datasets"]["meld_demo"].update(face_selection={"mode": "side", "sides": {"F": "left", "M": "right"}}),
     r"datasets.meld_demo.face_selection: MELD's speakers are characters' names"),
    (lambda c: (c["datasets"].update(mine={"format": "csv", "manifest": "README.md", "classes": ["calm", "mad"],
                                           "face_selection": {"mode": "side", "marked_actor": "left"}})),
     r"datasets.mine.face_selection.marked_actor: reads the actor with markers from IEMOCAP's dialogue ids"),
    # Anchors mined from one dataset's training faces, used on another (a fold of the same recordings): its
    # test faces, under their labels.
    (lambda c: c["anchors"].update(mined={"mine": {"dataset": "iemocap_demo", "visual": "densenet121"}})
     or c["experiments"]["meld_demo_sdt_vega"].update(anchors="mined"),
     r"experiments.meld_demo_sdt_vega.anchors: anchor set mined is mined from dataset iemocap_demo's training "
     r"faces, and this trains on meld_demo: .* Mine a set from meld_demo"),
    (lambda c: c["anchors"].update(mined={"mine": {"dataset": "iemocap_demo", "visual": "densenet121",
                                                   "per_class": 3, "min_per_class": 4}}),
     r"anchors.mined.mine: anchor mining setting min_per_class \(4\) exceeds per_class \(3\)"),
    (lambda c: c["datasets"]["meld_demo"].update(modalities=["text", "audio"])
     or c["anchors"].update(mined={"mine": {"dataset": "meld_demo", "visual": "densenet121"}}),
     r"anchors.mined.mine.dataset: meld_demo declares no visual modality .* give the anchor set images: a folder "
     r"with one sub-folder of face images per class .* or official: a 35_anchor.pt \(the released file holds "
     r"IEMOCAP's and MELD's classes only; `ercpipe export-anchors` writes one"),
])
def test_reference_errors_name_the_key(demo_config, mutate, expected):
    bad = copy.deepcopy(demo_config)
    mutate(bad)
    with pytest.raises(pipeline_config.ConfigError, match=expected):
        pipeline_config.check(bad, REPO)


def test_snakemake_stops_before_any_job(demo_config, tmp_path):
    bad = copy.deepcopy(demo_config)
    bad["features"]["text"]["minilm"]["poolin"] = "mean"
    result = dry_run(bad, tmp_path)
    assert result.returncode != 0
    # Snakemake prints the WorkflowError on stdout.
    assert "features.text.minilm.poolin: unknown key; did you mean pooling?" in result.stdout + result.stderr
    assert not (tmp_path / "features").exists() and not (tmp_path / "raw").exists()


def test_a_key_written_twice_in_the_config_file_is_named_with_its_lines(demo_config, tmp_path):
    """YAML keeps the last of two equal keys without a word: a copied experiment block would replace the first."""
    text = yaml.safe_dump(demo_config, sort_keys=False)
    block = text[text.index("  iemocap_demo_sdt:\n"):text.index("  meld_demo_sdt_vega:\n")]
    cfg = tmp_path / "twice.yaml"
    cfg.write_text(text.replace(block, block + block, 1))
    result = subprocess.run([SNAKEMAKE, "-n", "--configfile", str(cfg), "-d", str(tmp_path), "-s",
                             str(REPO / "Snakefile")], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    first = text[:text.index(block)].count("\n") + 1
    second = first + block.count("\n")
    assert (f"Invalid config (config files: {cfg}): {cfg}, line {second}: key 'iemocap_demo_sdt' is written twice "
            f"in the same block (first on line {first})") in result.stdout + result.stderr


def test_a_bad_value_given_with_config_is_not_blamed_on_the_config_file_alone(demo_config, tmp_path):
    """The header named only the config files, where the user looked in vain for the value set on the command line."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(demo_config))
    result = subprocess.run([SNAKEMAKE, "-n", "--configfile", str(cfg), "--config", "use_gpu=yes", "-d", str(tmp_path),
                             "-s", str(REPO / "Snakefile")], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert (f"Invalid config (config files: {cfg}; set with --config: use_gpu):"
            in result.stdout + result.stderr), result.stdout + result.stderr


@pytest.mark.parametrize("text, expected", [
    ("datasets:\n  demo:\n    format: csv\n   manifest: m.csv\n",
     r"line 4, column 4: expected <block end>, but found '<block mapping start>' \(while parsing a block mapping on "
     r"line 2\); check this line's indentation against the lines above it \(keys of one block line up\)"),
    ("experiments:\n\tx: {}\n", r"line 2, column 1: found character '\\t' that cannot start any token; YAML "
                                   r"indents with spaces only: replace the tab"),
    ("datasets:\n  demo: {format: csv, manifest: \"m.csv}\nexperiments: {}\n",
     r"line 4, column 1: found unexpected end of stream \(while scanning a quoted scalar on line 2\)"),
])
def test_a_yaml_mistake_is_named_with_its_line(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert re.fullmatch(re.escape(str(path)) + ", " + expected, pipeline_config.yaml_syntax_problem(path))
    with pytest.raises(pipeline_config.ConfigError, match=re.escape(str(path)) + ", " + expected):
        pipeline_config.check_config_file(path)


def test_snakemake_names_the_line_of_a_yaml_mistake_in_config_yaml(demo_config, tmp_path):
    """Snakemake's message was "Config file is not valid JSON or YAML", with neither the file nor the line."""
    lines = yaml.safe_dump(demo_config, sort_keys=False).splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith("experiments:")) + 2
    lines[number - 1] = lines[number - 1] + " ["
    (tmp_path / "config.yaml").write_text("\n".join(lines) + "\n")
    result = subprocess.run([SNAKEMAKE, "-n", "-d", str(tmp_path), "-s", str(REPO / "Snakefile")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert re.search(rf"Invalid config: config.yaml, line \d+, column \d+: .*\(while parsing a flow sequence on line "
                     rf"{number}\)", result.stdout + result.stderr), result.stdout + result.stderr


def test_a_dataset_nothing_uses_and_a_config_without_experiments_are_said(demo_config, tmp_path):
    """`rule all` made nothing of them without a word: a dry run listed one job, as after a finished run."""
    unused = copy.deepcopy(demo_config)
    del unused["experiments"]["meld_demo_sdt_vega"]
    for name in ("unused", "empty", "demo"):
        (tmp_path / name).mkdir()
    result = dry_run(unused, tmp_path / "unused")
    assert result.returncode == 0, result.stderr[-2000:]
    said = [line for line in (result.stdout + result.stderr).splitlines() if "makes nothing of it" in line]
    assert said == ["datasets.meld_demo: no experiment, selection, export or anchor mining uses it, so `snakemake` "
                    "(rule all) makes nothing of it; add an experiment, or name its files as targets, e.g. "
                    "features/meld_demo/manifest.tsv or features/meld_demo/{modality}/{setting}.h5"]
    empty = copy.deepcopy(demo_config)
    empty["experiments"] = {}
    result = dry_run(empty, tmp_path / "empty")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "The config has no experiments, selections or exports" in result.stdout + result.stderr
    assert "makes nothing of it" not in result.stdout + result.stderr
    result = dry_run(demo_config, tmp_path / "demo")
    assert "makes nothing of it" not in result.stdout + result.stderr and "has no experiments" not in result.stdout
    assert "--rerun-triggers without params" not in result.stdout + result.stderr
    # A raw fix or a changed setting is seen only through params: leaving the trigger out keeps old results.
    result = dry_run(demo_config, tmp_path / "demo", "--rerun-triggers", "mtime", "input")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--rerun-triggers without params: a fixed raw file" in result.stdout + result.stderr


def test_a_csv_without_valid_rows_stops_the_workflow_before_any_job(demo_config, tmp_path):
    """Known when the DAG is built, it was said only by the fine-tuning and training jobs, after the manifest and
    every extraction had run, with a `datasets.<name>.valid_split` left for the user to fill in."""
    path = tmp_path / "m.csv"
    path.write_text("dialogue_id,utterance_id,split,speaker,label,text\n" + "".join(
        f"{d},{d}_u{u},{'test' if d == 's0' else 'train'},{'AB'[u]},{['calm', 'angry'][u]},hi {u}\n"
        for d in ("t0", "t1", "t2", "s0") for u in range(2)))
    config = copy.deepcopy(demo_config)
    config["datasets"] = {"mine": {"format": "csv", "manifest": str(path), "classes": ["calm", "angry"],
                                   "modalities": ["text"]}}
    config["anchors"] = {}
    config["experiments"] = {"mine_sdt": {"dataset": "mine", "features": {"text": "minilm"}, "preset": "demo",
                                          "loss": {"clip_loss": False}, "anchors": None, "seeds": [0]}}
    result = dry_run(config, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in output
    assert "datasets.mine: " + str(path) + " has no valid rows; training and fine-tuning choose their epoch on " \
           "valid, so hold out train dialogues with `valid_split: {fraction: 0.1, seed: 0}`" in output
    assert "Needed by experiments.mine_sdt" in output
    # Selecting on test (the official protocol) needs no valid rows: it plans.
    config["experiments"]["mine_sdt"]["train"] = {"paper_compat": True}
    assert dry_run(config, tmp_path).returncode == 0


def test_the_readers_warnings_are_said_by_every_snakemake_call(demo_config, tmp_path):
    """A class that labels no row (a typo, or a relabel key that matches nothing) was said only in the manifest
    job's log, which Snakemake shows when a job fails: the run went on without it."""
    path = tmp_path / "m.csv"
    path.write_text("dialogue_id,utterance_id,split,speaker,label,text\n" + "".join(
        f"{d},{d}_u{u},{split},{'AB'[u]},{['calm', 'angry'][u]},hi {u}\n"
        for d, split in (("t0", "train"), ("v0", "valid"), ("s0", "test")) for u in range(2)))
    config = copy.deepcopy(demo_config)
    config["datasets"] = {"mine": {"format": "csv", "manifest": str(path), "classes": ["calm", "angry", "contempt"],
                                   "modalities": ["text"]}}
    config["anchors"] = {}
    config["experiments"] = {"mine_sdt": {"dataset": "mine", "features": {"text": "minilm"}, "preset": "demo",
                                          "loss": {"clip_loss": False}, "anchors": None, "seeds": [0]}}
    result = dry_run(config, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    said = [line for line in (result.stdout + result.stderr).splitlines() if "label no row" in line]
    assert said == [f"dataset mine: csv {path}: class(es) ['contempt'] of `classes` label no row"]
    # More shards than dialogues: empty shard jobs, each starting its extractor, were planned without a word.
    config["datasets"]["mine"].update(classes=["calm", "angry"], shards=5)
    result = dry_run(config, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    said = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("dataset mine:")]
    assert said == ["dataset mine: `shards: 5` is more than its 3 dialogue(s): 2 shard(s) get no rows, and each still "
                    "runs one job per step (which starts its extractor); give fewer shards"]


def test_the_order_of_modalities_does_not_change_what_a_rule_is_given(demo_config):
    written = copy.deepcopy(demo_config)
    written["datasets"]["meld_demo"]["modalities"] = ["visual", "text", "audio"]
    pipeline_config.normalize_modalities(written)
    assert written["datasets"]["meld_demo"]["modalities"] == ["text", "audio", "visual"]


def test_snakemake_dry_run_lists_the_dag(demo_config, tmp_path):
    result = dry_run(demo_config, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for rule in ("synthetic_corpus", "build_manifest", "utterance_audio", "text_features_shard",
                 "audio_features_shard", "visual_features_shard", "merge_features", "encode_anchors",
                 "train_model", "aggregate_experiment", "feature_coverage"):
        assert rule in result.stdout, rule


def test_an_exported_anchor_set_covers_every_label_id_of_the_exported_pickle(demo_config):
    """A CSV dataset with four of MELD's classes keeps MELD's label ids (0..6) in the exported pickle: its
    35_anchor.pt needs a row for each of them, so the set is encoded for all seven (an experiment alone needs
    only the four)."""
    demo_config["datasets"]["four"] = {"format": "csv", "manifest": "four.csv",
                                       "classes": ["neutral", "joy", "sadness", "anger"]}
    demo_config["anchors"]["four_faces"] = {"synthetic": {"per_class": 2}, "clip": {"model": "ViT-B-32"}}
    demo_config["experiments"]["four_vega"] = {**demo_config["experiments"]["meld_demo_sdt_vega"],
                                               "dataset": "four", "anchors": "four_faces"}
    assert pipeline_config.anchor_classes(demo_config, "four_faces") == ["neutral", "happy", "sad", "anger"]
    demo_config["exports"] = {"four_back": {"experiment": "four_vega"}}
    assert pipeline_config.anchor_classes(demo_config, "four_faces") == [
        "neutral", "happy", "sad", "anger", "surprise", "fear", "disgust"]


def test_a_target_under_another_datasets_folder_is_refused(demo_config, tmp_path):
    """results/iemocap_demo/meld_demo_sdt_vega/summary.json aggregated MELD's runs into IEMOCAP's folder (and an
    export's 35_anchor.pt likewise), where training, selections and exports already refused it."""
    demo_config["exports"] = {"meld_back": {"experiment": "meld_demo_sdt_vega"}}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(demo_config))
    for target, expected in (
            ("results/iemocap_demo/meld_demo_sdt_vega/summary.json",
             "experiment meld_demo_sdt_vega trains on meld_demo, not iemocap_demo; use results/meld_demo/"
             "meld_demo_sdt_vega/"),
            ("results/iemocap_demo/export/meld_back/35_anchor.pt",
             "export meld_back is of dataset meld_demo, not iemocap_demo; use results/meld_demo/export/meld_back/")):
        result = subprocess.run([SNAKEMAKE, "-n", target, "--configfile", str(cfg), "-d", str(tmp_path), "-s",
                                 str(REPO / "Snakefile")], capture_output=True, text=True, timeout=300)
        assert result.returncode != 0 and expected in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]


def test_clip_name_is_filesystem_safe():
    assert pipeline_config.clip_name({"model": "ViT-B-32", "pretrained": None}) == "ViT-B-32"
    assert pipeline_config.clip_name({"model": "ViT-L-14-336", "pretrained": "openai"}) == "ViT-L-14-336_openai"
    assert pipeline_config.clip_name({"model": "ViT-B-32", "pretrained": "/ckpt/my clip.pt"}) == "ViT-B-32_my-clip"
    # One name for the file and for the attribute ercpipe.anchors records: a tag's "_" becomes "-" ("_" separates
    # the parts), and a setting without pretrained names what it loads (the openai weights).
    assert (pipeline_config.clip_name({"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"})
            == "ViT-B-32_laion2b-s34b-b79k")
    assert pipeline_config.clip_name({"model": "ViT-B-32"}) == "ViT-B-32_openai"
    assert pipeline_config.clip_name({"model": "ViT-B-32", "pretrained": None, "batch_size": 8}) == "ViT-B-32"


def test_the_anchor_file_and_its_attribute_have_one_clip_name():
    from ercpipe import clip_setting
    from ercpipe.anchors import clip

    assert pipeline_config.clip_name is clip_setting.clip_name is clip.clip_name
    assert clip.clip_settings({"model": "ViT-B-32"})["pretrained"] == "openai"  # what the default loads


def test_anchor_classes_cover_every_dataset_using_the_set(demo_config):
    names = pipeline_config.anchor_classes(demo_config, "demo_faces")
    # IEMOCAP's six and MELD's seven classes, merged through the aliases (hap = joy = happy ...).
    assert sorted(names) == sorted(["happy", "sad", "neutral", "anger", "excited", "frustration", "surprise",
                                    "fear", "disgust"])
    # Another experiment on a dataset already using the set, named to sort first: the same list in the same order
    # (the list is the set's params; a new order re-encoded it and re-trained every experiment using it).
    more = copy.deepcopy(demo_config)
    more["experiments"]["a_meld_second"] = {**more["experiments"]["meld_demo_sdt_vega"], "seeds": [1]}
    assert pipeline_config.anchor_classes(more, "demo_faces") == names


# The configurations for the feature pickles need pickle files to check: tests/test_pickle_pipeline.py makes them.
@pytest.mark.parametrize("path", sorted(p for p in (REPO / "workflow" / "configs").glob("*.yaml")
                                        if not p.name.endswith("_pickle.yaml")), ids=lambda p: p.name)
def test_shipped_real_data_configs_are_valid(path, tmp_path):
    """The configurations for real data validate once their raw folders and image sets exist."""
    config = yaml.safe_load(path.read_text())
    pipeline_config.validate_schema(config, SCHEMA)
    pipeline_config.expand_searches(config, tmp_path)
    for ds in config["datasets"].values():
        if ds["format"] == "csv":
            (tmp_path / ds["manifest"]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / ds["manifest"]).write_text("dialogue_id,utterance_id,split,speaker,label,text\n")
        else:
            (tmp_path / ds["root"]).mkdir(parents=True, exist_ok=True)
    for anchor_set in config.get("anchors", {}).values():
        if anchor_set.get("images"):
            (tmp_path / anchor_set["images"]).mkdir(parents=True, exist_ok=True)
    pipeline_config.check(config, tmp_path)
    with pytest.raises(pipeline_config.ConfigError, match="does not exist"):
        pipeline_config.check(config, tmp_path / "elsewhere")


# ------------------------------------------------------------------------------------------ paths in the config

@pytest.mark.parametrize("model, is_path", [
    ("packaged:minilm", False), ("roberta-large", False), ("FacebookAI/roberta-large", False),
    ("sentence-transformers/all-MiniLM-L6-v2", False),
    ("/models/roberta", True), ("./models/roberta", True), ("../roberta", True), ("~/models/roberta", True),
    ("models/roberta/large", True), ("models/roberta/", True), ("models\\roberta", True), ("my model", True),
])
def test_text_model_path_rule(model, is_path):
    """A text model is a path (and must exist) when it cannot be a hub id; `name` / `org/name` are hub ids."""
    assert pipeline_config.text_model_is_path(model) is is_path


def _with_paths(demo_config: dict, tmp_path: Path) -> dict:
    """The demo config plus a real-data dataset, a csv dataset, an image anchor set and local-path settings."""
    config = copy.deepcopy(demo_config)
    (tmp_path / "raw" / "IEMOCAP_full_release").mkdir(parents=True)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "split.json").write_text("{}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.csv").write_text("dialogue_id,utterance_id,split,speaker,label\n")
    (tmp_path / "models" / "roberta").mkdir(parents=True)
    (tmp_path / "models" / "roberta" / "config.json").write_text("{}")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "denseface.pth").write_bytes(b"x")
    (tmp_path / "weights" / "clip.pt").write_bytes(b"x")
    (tmp_path / "faces" / "happy").mkdir(parents=True)
    config["datasets"]["real"] = {"format": "iemocap", "root": "raw/IEMOCAP_full_release",
                                  "split_file": "splits/split.json"}
    config["datasets"]["mine"] = {"format": "csv", "manifest": "data/mine.csv", "classes": ["calm", "angry"]}
    config["features"]["text"]["local"] = {"model": "./models/roberta"}
    config["features"]["visual"]["denseface"] = {"backbone": "denseface", "weights": "weights/denseface.pth"}
    config["anchors"]["faces"] = {"images": "faces", "clip": {"model": "ViT-B-32", "pretrained": "weights/clip.pt"}}
    return config


def test_paths_that_exist_pass(demo_config, tmp_path):
    config = _with_paths(demo_config, tmp_path)
    pipeline_config.check(config, tmp_path)
    config["datasets"]["mine"]["root"] = "data"
    config["datasets"]["mine"]["valid_split"] = {"fraction": 0.1, "seed": 0}  # a CSV may hold out valid dialogues
    config["features"]["text"]["local"]["model"] = str(tmp_path / "models" / "roberta")  # absolute
    pipeline_config.check(config, tmp_path)


FIX_WEIGHTS = ('set it to a denseface checkpoint file, "random" (random init: demo and tests only) or null '
               "(densenet121: the ImageNet weights in the torch hub cache; docs/features.md)")
FIX_MODEL = ("point it at a local model directory (saved with save_pretrained, holding config.json), or give a "
             "Hugging Face name such as roberta-large or org/name (docs/features-text.md)")


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["features"]["visual"]["denseface"].update(weights="weights/missing.pth"),
     "features.visual.denseface.weights: file weights/missing.pth does not exist (relative paths start from the "
     "working directory {wd}); " + FIX_WEIGHTS),
    (lambda c: c["features"]["visual"]["denseface"].update(weights="weights"),
     "features.visual.denseface.weights: weights is a folder, not a file; " + FIX_WEIGHTS),
    (lambda c: c["features"]["visual"]["denseface"].update(weights="~/denseface.pth"),
     "features.visual.denseface.weights: ~/denseface.pth starts with '~', which is not expanded to your home "
     "folder; write the full path (" + FIX_WEIGHTS + ")"),
    (lambda c: c["features"]["visual"]["denseface"].update(weights="/nonexistent/denseface.pth"),
     "features.visual.denseface.weights: file /nonexistent/denseface.pth does not exist; " + FIX_WEIGHTS),
    (lambda c: c["features"]["text"]["local"].update(model="./models/missing"),
     "features.text.local.model: folder ./models/missing does not exist (relative paths start from the working "
     "directory {wd}); " + FIX_MODEL),
    (lambda c: c["features"]["text"]["local"].update(model="models/roberta/large"),
     "features.text.local.model: folder models/roberta/large does not exist (relative paths start from the "
     "working directory {wd}); " + FIX_MODEL),
    (lambda c: c["features"]["text"]["local"].update(model="./weights"),
     "features.text.local.model: folder ./weights holds no config.json, so it is not a saved model; " + FIX_MODEL),
    (lambda c: c["anchors"]["faces"]["clip"].update(pretrained="weights/missing.pt"),
     "anchors.faces.clip.pretrained: file weights/missing.pt does not exist (relative paths start from the "
     "working directory {wd}); set it to a local open_clip checkpoint file, an open_clip tag such as openai, or "
     "null (random init; docs/anchors.md)"),
    (lambda c: c["anchors"]["faces"].update(images="faces/missing"),
     "anchors.faces.images: folder faces/missing does not exist (relative paths start from the working directory "
     "{wd}); point it at a folder with one sub-folder of images per class (docs/anchors.md), or use synthetic: "
     "or mine: instead"),
    (lambda c: c["datasets"]["real"].update(split_file="splits/missing.json"),
     "datasets.real.split_file: file splits/missing.json does not exist (relative paths start from the working "
     "directory {wd}); point it at a JSON file with train, valid and test dialogue lists, or leave it out for "
     "the standard split"),
    (lambda c: c["datasets"]["real"].update(root="raw/MELD.Raw"),
     "datasets.real.root: folder raw/MELD.Raw does not exist (relative paths start from the working directory "
     "{wd}); point it at the raw IEMOCAP release folder (README, 'Your data'; docs/manifest.md)"),
    (lambda c: c["datasets"]["mine"].update(manifest="data/other.csv"),
     "datasets.mine.manifest: file data/other.csv does not exist (relative paths start from the working "
     "directory {wd}); point it at your manifest CSV (format: docs/manifest.md)"),
    (lambda c: c["datasets"]["mine"].update(root="media"),
     "datasets.mine.root: folder media does not exist (relative paths start from the working directory {wd}); "
     "point it at the folder the manifest's relative media paths start from, or leave root out (they then "
     "start from the manifest's folder; docs/manifest.md)"),
])
def test_a_wrong_path_names_the_key_the_path_and_the_fix(demo_config, tmp_path, mutate, expected):
    config = _with_paths(demo_config, tmp_path)
    mutate(config)
    with pytest.raises(pipeline_config.ConfigError) as caught:
        pipeline_config.check(config, tmp_path)
    assert str(caught.value) == expected.format(wd=tmp_path)


def test_a_root_behind_a_link_to_unmounted_storage_names_the_link(demo_config, tmp_path):
    """raw/IEMOCAP_full_release -> /scratch/... after the scratch storage went away: "does not exist" named only the
    link's own path, which the user can see is there (ls shows it), and not its target."""
    config = _with_paths(demo_config, tmp_path)
    (tmp_path / "IEMOCAP_link").symlink_to(tmp_path / "scratch" / "IEMOCAP_full_release")
    config["datasets"]["real"]["root"] = "IEMOCAP_link"
    with pytest.raises(pipeline_config.ConfigError) as caught:
        pipeline_config.check(config, tmp_path)
    assert str(caught.value).startswith(
        f"datasets.real.root: IEMOCAP_link does not exist: {tmp_path}/IEMOCAP_link is a link "
        f"to {tmp_path}/scratch/IEMOCAP_full_release, which does not exist (storage not mounted?). Mount it again")
    # A link further up the path: that one is named.
    (tmp_path / "mnt").symlink_to(tmp_path / "share")
    config["datasets"]["real"]["root"] = str(tmp_path / "mnt" / "IEMOCAP_full_release")
    with pytest.raises(pipeline_config.ConfigError, match=r"mnt is a link to .*share, which does not exist"):
        pipeline_config.check(config, tmp_path)


def test_a_folder_named_in_the_other_unicode_form_is_pointed_out(demo_config, tmp_path):
    """A release copied from macOS: "Müller" on disk is "Mu" + a combining diaeresis, and the config's "Müller"
    (typed, NFC) was "does not exist" for a name that prints identically."""
    config = _with_paths(demo_config, tmp_path)
    (tmp_path / "Daten_Mu\u0308ller" / "IEMOCAP_full_release").mkdir(parents=True)
    config["datasets"]["real"]["root"] = "Daten_M\u00fcller/IEMOCAP_full_release"
    with pytest.raises(pipeline_config.ConfigError) as caught:
        pipeline_config.check(config, tmp_path)
    on_disk = ascii(str(tmp_path / "Daten_Mu\u0308ller" / "IEMOCAP_full_release"))
    assert str(caught.value) == (
        f"datasets.real.root: folder Daten_M\u00fcller/IEMOCAP_full_release does not exist as typed, but one whose "
        f"name looks the same does: {on_disk}, its accented letters encoded as NFD (macOS writes names decomposed, "
        "NFD); rename it (`mv`), or paste its name from `ls` into the config")


def test_every_wrong_path_is_reported_at_once(demo_config, tmp_path):
    config = _with_paths(demo_config, tmp_path)
    config["features"]["visual"]["denseface"]["weights"] = "weights/missing.pth"
    config["anchors"]["faces"]["images"] = "faces/missing"
    with pytest.raises(pipeline_config.ConfigError) as caught:
        pipeline_config.check(config, tmp_path)
    lines = str(caught.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["features.visual.denseface.weights", "anchors.faces.images"]


def test_a_local_text_models_depth_and_length_are_checked_before_any_job(demo_config, tmp_path):
    """last_layers past the model's layers and max_length past its positions failed only inside the extraction
    jobs, after the manifest and the other extractors had run. RoBERTa's positions start after the padding
    index: 514 embeddings take 512 tokens (a model saved without model_max_length crashed at 513)."""
    import json

    config = _with_paths(demo_config, tmp_path)
    (tmp_path / "models" / "roberta" / "config.json").write_text(json.dumps(
        {"model_type": "roberta", "num_hidden_layers": 3, "max_position_embeddings": 514, "pad_token_id": 1}))
    config["features"]["text"]["local"].update(last_layers=4, max_length=513, finetune={"max_length": 600})
    config["features"]["text"]["minilm_long"] = {"model": "packaged:minilm", "max_length": 4096}  # 512 positions
    with pytest.raises(pipeline_config.ConfigError) as caught:
        pipeline_config.check(config, tmp_path)
    assert str(caught.value).splitlines() == [
        "features.text.local.last_layers: last_layers=4 but model './models/roberta' has only 3 hidden layers; "
        "set last_layers to at most 3",
        "features.text.local.max_length: max_length=513 exceeds what model './models/roberta' accepts "
        "(512 tokens); set max_length to at most 512",
        "features.text.local.finetune.max_length: finetune.max_length=600 exceeds what model './models/roberta' "
        "accepts (512 tokens); set finetune.max_length to at most 512",
        "features.text.minilm_long.max_length: max_length=4096 exceeds what model 'packaged:minilm' accepts "
        "(512 tokens); set max_length to at most 512"]
    config["features"]["text"]["local"].update(last_layers=3, max_length=512, finetune=None)
    config["features"]["text"]["minilm_long"]["max_length"] = 512
    (tmp_path / "models" / "roberta" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 256}))
    with pytest.raises(pipeline_config.ConfigError, match=r"max_length=512 exceeds .* \(256 tokens\)"):
        pipeline_config.check(config, tmp_path)  # the tokenizer's own limit is lower
    config["features"]["text"]["local"]["max_length"] = 256
    pipeline_config.check(config, tmp_path)
    # A sentence-transformers folder keeps its transformer in a sub-folder: the message names it.
    config = _with_paths(demo_config, tmp_path / "st_project")
    st = tmp_path / "st_project" / "models" / "st"
    (st / "0_Transformer").mkdir(parents=True)
    (st / "0_Transformer" / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 6}))
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    config["features"]["text"]["local"]["model"] = "./models/st"
    with pytest.raises(pipeline_config.ConfigError) as caught:
        pipeline_config.check(config, tmp_path / "st_project")
    assert str(caught.value) == ("features.text.local.model: folder ./models/st holds no config.json, so it is not a "
                                 "saved model; it is a sentence-transformers folder whose transformer is in "
                                 "0_Transformer/: give ./models/st/0_Transformer (with normalize: true if its "
                                 "modules.json lists a Normalize step)")


def test_hub_names_and_tags_are_not_paths(demo_config, tmp_path):
    config = _with_paths(demo_config, tmp_path)
    config["features"]["text"]["local"]["model"] = "FacebookAI/roberta-large"  # not here: the job reads the cache
    config["anchors"]["faces"]["clip"]["pretrained"] = "openai"
    config["features"]["visual"]["denseface"]["weights"] = None
    pipeline_config.check(config, tmp_path)


def test_snakemake_n_stops_on_a_wrong_path(demo_config, tmp_path):
    """README: a wrong path stops the run before any job (also `snakemake -n`)."""
    bad = copy.deepcopy(demo_config)
    bad["features"]["visual"]["densenet121"]["weights"] = "weights/densenet121.pth"
    result = dry_run(bad, tmp_path)
    assert result.returncode != 0
    assert ("features.visual.densenet121.weights: file weights/densenet121.pth does not exist (relative paths "
            f"start from the working directory {tmp_path}); set it to a densenet121 checkpoint file"
            in result.stdout + result.stderr)
    assert "Job stats" not in result.stdout
    assert not (tmp_path / "features").exists() and not (tmp_path / "raw").exists()


# ------------------------------------------------------------------------------------------ csv datasets

CSV_CONFIG = {
    "datasets": {"mine": {"format": "csv", "manifest": "data/mine.csv", "classes": ["calm", "angry"]}},
    "features": {"text": {"minilm": {"model": "packaged:minilm"}}},
    "experiments": {"mine_sdt": {"dataset": "mine", "features": {"text": "minilm"}, "anchors": None,
                                 "preset": "sdt", "seeds": [0]}},
}


def _csv_dataset(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    (tmp_path / "data" / "audio").mkdir(parents=True)
    sf.write(str(tmp_path / "data" / "audio" / "c1.wav"), np.zeros(16000, dtype=np.float32), 16000)
    (tmp_path / "data" / "mine.csv").write_text(
        "dialogue_id,utterance_id,split,speaker,label,text,audio_path\n"
        "c1,c1_u0,train,Ann,calm,Hello there.,audio/c1.wav\n"
        "c1,c1_u1,train,Bob,angry,No.,\n"
        "c2,c2_u0,valid,Ann,calm,Hi.,\n"
        "c3,c3_u0,test,Cy,angry,Go.,\n")


def test_csv_dataset_root_is_optional():
    assert pipeline_config.dataset_root("mine", CSV_CONFIG["datasets"]["mine"]) is None
    assert pipeline_config.dataset_root("mine", {**CSV_CONFIG["datasets"]["mine"], "root": "media"}) == Path("media")
    assert pipeline_config.dataset_root("x", {"format": "meld", "synthetic": True}) == Path("raw/synthetic/x")


def test_csv_dataset_without_root_runs(tmp_path):
    """`format: csv` without `root`: the DAG builds, and the manifest rule reads media paths from the CSV's folder."""
    _csv_dataset(tmp_path)
    result = dry_run(CSV_CONFIG, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "build_manifest" in result.stdout and "train_model" in result.stdout
    cfg = tmp_path / "config.yaml"
    result = subprocess.run([SNAKEMAKE, "--cores", "1", "--until", "build_manifest", "--configfile", str(cfg), "-d",
                             str(tmp_path), "-s", str(REPO / "Snakefile")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from ercpipe.io import manifest as manifest_io

    manifest = manifest_io.read(tmp_path / "features" / "mine" / "manifest.tsv")
    assert manifest["utterance_id"].tolist() == ["c1_u0", "c1_u1", "c2_u0", "c3_u0"]
    # Relative to the CSV's folder (data/), written relative to the working directory as the CSV path is.
    assert (tmp_path / manifest["audio_path"].iloc[0]).resolve() == (tmp_path / "data" / "audio" / "c1.wav").resolve()
    assert "missing_audio" not in manifest["flags"].iloc[0]
    import torch

    if torch.cuda.is_available():
        return
    # use_gpu asks for a GPU: a job that sees none stops, saying so, rather than extracting on the CPU unnoticed.
    result = subprocess.run([SNAKEMAKE, "--cores", "1", "--until", "text_features_shard", "--configfile", str(cfg),
                             "--config", "use_gpu=True", "-d", str(tmp_path), "-s", str(REPO / "Snakefile")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    (log,) = (tmp_path / "logs" / "text_features").rglob("*.log")
    assert "failed: DeviceError: use_gpu is true but this job sees no usable GPU" in log.read_text()


def test_an_interpreter_at_a_path_the_shell_splits_is_refused_before_any_job(tmp_path):
    """Snakemake runs a job's script with its interpreter's path unquoted: a venv inside a project folder named
    with a space made every job fail with "/tmp/my: No such file or directory". Said once, before any job; a dry
    run (no script) is not refused."""
    _csv_dataset(tmp_path)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(CSV_CONFIG))
    venv = tmp_path / "my project" / ".venv"
    venv.parent.mkdir()
    venv.symlink_to(Path(sys.executable).parent.parent)
    python = venv / "bin" / Path(sys.executable).name
    command = [str(python), "-m", "snakemake", "--cores", "1", "--until", "build_manifest", "--configfile", str(cfg),
               "-d", str(tmp_path), "-s", str(REPO / "Snakefile")]
    result = subprocess.run([*command, "-n"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "build_manifest" in result.stdout, result.stderr[-3000:]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert (f"Snakemake runs every job's script with this Python, {python}, whose path it does not quote"
            in result.stderr), result.stderr[-3000:]
    assert "No such file or directory" not in result.stderr and not (tmp_path / "features").exists()
    # Letters of other scripts are no shell syntax: such a path runs.
    plain = tmp_path / "émotions" / ".venv"
    plain.parent.mkdir()
    plain.symlink_to(Path(sys.executable).parent.parent)
    command[0] = str(plain / "bin" / Path(sys.executable).name)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "features" / "mine" / "manifest.tsv").exists()


def test_two_classes_spelling_one_emotion_cannot_share_an_anchor_set(tmp_path):
    """'joy' and 'happy' both read as happy: the VEGA branch got the same anchors for both, with no word."""
    _csv_dataset(tmp_path)
    config = copy.deepcopy(CSV_CONFIG)
    config["datasets"]["mine"]["classes"] = ["joy", "happy", "angry", "anger", "calm"]
    config["anchors"] = {"faces": {"images": "faces", "clip": {"model": "ViT-B-32", "pretrained": None}}}
    (tmp_path / "faces").mkdir()
    config["experiments"]["mine_vega"] = {"dataset": "mine", "features": {"text": "minilm"}, "anchors": "faces",
                                          "preset": "demo", "seeds": [0]}
    with pytest.raises(pipeline_config.ConfigError) as caught:
        pipeline_config.check(config, tmp_path)
    assert str(caught.value) == (
        "experiments.mine_vega.anchors: dataset mine's classes would share anchors ('joy' and 'happy' are both "
        "'happy'; 'angry' and 'anger' are both 'anger', as ercpipe.labels reads emotion names), so the VEGA branch "
        "could not tell them apart; merge those classes (the labels of your data), or train SDT without anchors")
    del config["experiments"]["mine_vega"]
    config["anchors"] = {}
    pipeline_config.check(config, tmp_path)  # without anchors the classes are fine


def test_iemocap_defaults_written_out_are_the_same_reader_settings(tmp_path):
    """Params hold reader_config: IEMOCAP's six classes listed, its shipped split file named, or a relabel key in
    another case used to re-run the manifest and every training job though the reader reads the same."""
    from ercpipe.datasets.iemocap import DEFAULT_SPLIT_FILE
    from ercpipe.labels import IEMOCAP_CLASSES

    plain = pipeline_config.reader_config("d", {"format": "iemocap", "root": "raw/d", "relabel": {"exc": "hap"}})
    written = pipeline_config.reader_config("d", {"format": "iemocap", "root": "raw/d", "relabel": {" Exc": "hap"},
                                                  "classes": list(IEMOCAP_CLASSES),
                                                  "split_file": str(DEFAULT_SPLIT_FILE)})
    assert written == plain
    # face_selection written as the format's default is the default too (it used to re-run the issues job).
    assert pipeline_config.reader_config("d", {"format": "iemocap", "root": "raw/d", "relabel": {"exc": "hap"},
                                               "face_selection": {"mode": "side", "sides": {"F": "left", "M": "right"}}
                                               }) == plain
    assert "face_selection" not in pipeline_config.reader_config(
        "m", {"format": "meld", "root": "raw/m", "face_selection": {"mode": "largest_central"}})
    # Another order of the classes is another label-id order, another split file another split: not defaults.
    other = pipeline_config.reader_config("d", {"format": "iemocap", "root": "raw/d",
                                                "classes": list(reversed(IEMOCAP_CLASSES)),
                                                "split_file": str(tmp_path / "split.json")})
    assert other["classes"] == list(reversed(IEMOCAP_CLASSES)) and other["split_file"] == str(tmp_path / "split.json")
    # Keys equal once lower-cased stay as written: the reader refuses them, naming both.
    assert pipeline_config.reader_config("d", {"format": "iemocap", "root": "raw/d",
                                               "relabel": {"Sur": "hap", "sur": "neu"}})["relabel"] == {
        "Sur": "hap", "sur": "neu"}


def test_a_key_of_another_formats_reader_is_refused_before_any_job(tmp_path):
    config = {"datasets": {"m": {"format": "meld", "root": str(tmp_path), "classes": ["neutral", "joy"]}}}
    with pytest.raises(pipeline_config.ConfigError, match=r"datasets\.m\.classes: not a setting of format meld"):
        pipeline_config.check(config, tmp_path)
    config = {"datasets": {"i": {"format": "iemocap", "root": str(tmp_path), "probe_media": True}}}
    with pytest.raises(pipeline_config.ConfigError, match=r"datasets\.i\.probe_media: not a setting of format iemocap"):
        pipeline_config.check(config, tmp_path)


def test_an_iemocap_relabel_target_that_is_not_a_class_is_a_config_error(tmp_path):
    config = {"datasets": {"i": {"format": "iemocap", "root": str(tmp_path), "relabel": {"exc": "joy"}}}}
    with pytest.raises(pipeline_config.ConfigError, match=r"datasets\.i: iemocap relabel: 'exc' -> 'joy'"):
        pipeline_config.check(config, tmp_path)


def test_the_reports_workflow_page_says_which_weights_the_features_and_anchors_came_from(demo_config):
    """The report named feature settings only: nothing said the demo's DenseNet and CLIP are random-init, and a
    reader took them for ImageNet / OpenAI weights. Rendered as Snakemake renders it (Jinja, then docutils)."""
    import jinja2
    from docutils.core import publish_parts

    def page(config: dict) -> str:
        class Snakemake:  # what Snakemake hands the template
            pass

        Snakemake.config = config
        text = jinja2.Environment().from_string((REPO / "workflow/report/workflow.rst").read_text()).render(
            snakemake=Snakemake, categories={}, files={})
        html = publish_parts(text, writer="html")["html_body"]
        assert "system-message" not in html, html  # valid reStructuredText
        return " ".join(re.sub(r"<(?!/?strong)[^>]+>", "", html).split())  # ``literals`` as plain text

    demo = page(demo_config)
    assert ("Models the features were computed with: text minilm: packaged:minilm; audio is10: openSMILE IS10; "
            "visual densenet121: densenet121, <strong>random-init weights</strong>") in demo
    assert "Anchor set demo_faces: CLIP ViT-B-32, <strong>random-init weights</strong>" in demo
    real = copy.deepcopy(demo_config)
    real["features"]["visual"]["densenet121"]["weights"] = "models/densenet121.pth"
    real["features"]["text"]["minilm"]["finetune"] = {}  # the defaults: fine-tuned all the same
    real["anchors"]["demo_faces"]["clip"]["pretrained"] = "openai"
    real["features"]["visual"]["dn_"] = {"backbone": "densenet121", "weights": "w*|_.pth"}  # no RST markup
    real_page = page(real)
    assert "visual dn_: densenet121, weights w*|_.pth" in real_page
    assert "random-init" not in real_page and "visual densenet121: densenet121, weights models/densenet121.pth" \
        in real_page and "Anchor set demo_faces: CLIP ViT-B-32, weights openai" in real_page
    assert "text minilm: packaged:minilm fine-tuned on the train split" in real_page
