"""`ercpipe` on bad input: one line `ercpipe: error: <message>` naming the file and the fix, exit status 2,
no traceback (unless --debug)."""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
import torch

EXE = str(Path(sys.executable).with_name("ercpipe"))
PICKLE_LAYOUT = "a VEGA 7-tuple or an SDT 12/13-tuple, docs/features-text.md"
ANCHOR_LAYOUT = "a torch-saved dict with anchor_center and anchor_img_dict, as the official 35_anchor.pt"


def ercpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_one_line(result: subprocess.CompletedProcess, line: str) -> None:
    assert (result.returncode, result.stderr) == (2, f"ercpipe: error: {line}\n")
    assert result.stdout == ""


def unpickling_reason(data: bytes) -> str:
    """What pickle says about `data` in this interpreter (the CLI runs the same one)."""
    try:
        pickle.loads(data, encoding="latin1")
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {err}"
    raise AssertionError("data unpickles")


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A plain pickle, random bytes, a text file, an HDF5 file and an empty file."""
    paths = {"pickle": tmp_path / "IEMOCAP.pkl", "random": tmp_path / "random.bin", "text": tmp_path / "notes.txt",
             "hdf5": tmp_path / "text.h5", "empty": tmp_path / "empty.pkl"}
    paths["pickle"].write_bytes(pickle.dumps((1, 2, 3), protocol=4))
    paths["random"].write_bytes(np.random.default_rng(0).bytes(300))
    paths["text"].write_text("speaker,text\nAnn,hello\n")
    with h5py.File(paths["hdf5"], "w") as handle:
        handle.create_dataset("x", data=np.zeros(3))
    paths["empty"].write_bytes(b"")
    return paths


def test_import_pickle_refusal_names_the_flag(files, tmp_path):
    result = ercpipe("import-pickle", "IEMOCAP.pkl", "--out-dir", "features/x", cwd=tmp_path)
    assert_one_line(result, "refusing to unpickle IEMOCAP.pkl: unpickling a file can run arbitrary code stored in "
                            "it; only if you trust where the file comes from, add --allow-pickle")
    assert not (tmp_path / "features").exists()


def test_import_pickle_of_files_that_are_no_feature_pickle(files, tmp_path):
    for name in ("random.bin", "notes.txt"):
        reason = unpickling_reason((tmp_path / name).read_bytes())
        result = ercpipe("import-pickle", name, "--allow-pickle", "--out-dir", "out", cwd=tmp_path)
        assert_one_line(result, f"{name} is not a pickle of the expected layout ({PICKLE_LAYOUT}): it cannot be "
                                f"unpickled ({reason})")
    # Recognisable without unpickling: refused as what it is, with or without --allow-pickle.
    result = ercpipe("import-pickle", "text.h5", "--out-dir", "out", cwd=tmp_path)
    assert_one_line(result, f"text.h5 is not a pickle of the expected layout ({PICKLE_LAYOUT}); it is an HDF5 file "
                            "(an ercpipe feature file is used as it is, not imported)")
    result = ercpipe("import-pickle", "empty.pkl", "--allow-pickle", "--out-dir", "out", cwd=tmp_path)
    assert_one_line(result, f"empty.pkl is not a pickle of the expected layout ({PICKLE_LAYOUT}); the file is empty")
    # A pickle of something else than the community tuples.
    result = ercpipe("import-pickle", "IEMOCAP.pkl", "--allow-pickle", "--out-dir", "out", cwd=tmp_path)
    assert_one_line(result, "IEMOCAP.pkl is not a pickle of the expected layout: expected a 7-tuple (VEGA) or a "
                            "12/13-tuple (SDT), it holds a 3-tuple")
    result = ercpipe("import-pickle", "missing.pkl", "--allow-pickle", "--out-dir", "out", cwd=tmp_path)
    assert_one_line(result, "feature pickle missing.pkl does not exist")
    assert not (tmp_path / "out").exists()


def test_import_anchors_of_files_that_are_no_torch_file(files, tmp_path):
    for name, allow in (("random.bin", ["--allow-pickle"]), ("notes.txt", []), ("text.h5", ["--allow-pickle"]),
                        ("IEMOCAP.pkl", [])):  # a plain pickle is not what torch.save writes
        result = ercpipe("import-anchors", name, *allow, "--classes", "hap", "sad", "--clip-model", "ViT-B-32",
                         "--out", "a.h5", cwd=tmp_path)
        assert_one_line(result, f"{name} is not a torch file of the expected layout ({ANCHOR_LAYOUT}); point at "
                                "the official anchor file")
    result = ercpipe("import-anchors", "35_anchor.pt", "--classes", "hap", "sad", "--clip-model", "ViT-B-32",
                     "--out", "a.h5", cwd=tmp_path)
    assert_one_line(result, "official anchor file 35_anchor.pt does not exist")
    assert not (tmp_path / "a.h5").exists()


def test_import_anchors_refusal_names_the_flag(tmp_path):
    torch.save({"anchor_center": torch.zeros(2, 4), "anchor_img_dict": {}, "args": argparse.Namespace(lr=1.0)},
               tmp_path / "35_anchor.pt")
    result = ercpipe("import-anchors", "35_anchor.pt", "--classes", "hap", "sad", "--clip-model", "ViT-B-32",
                     "--out", "a.h5", cwd=tmp_path)
    assert_one_line(result, "refusing to unpickle 35_anchor.pt: it cannot be loaded as plain tensors (torch.load "
                            "weights_only=True: it holds an object of class argparse.Namespace) and needs full "
                            "unpickling, which can run arbitrary code stored in the file; only if you trust where "
                            "it came from, add --allow-pickle")


def test_an_anchor_file_that_would_run_a_command_is_refused_naming_the_call(tmp_path):
    """torch words a blocked module's global otherwise ("... whose module posix is blocked"): the refusal showed
    only torch's pointer to its documentation."""
    class Payload:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"anchor_center": torch.zeros(2, 4), "anchor_img_dict": {}, "args": Payload()},
               tmp_path / "35_anchor.pt")
    result = ercpipe("import-anchors", "35_anchor.pt", "--classes", "hap", "sad", "--clip-model", "ViT-B-32",
                     "--out", "a.h5", cwd=tmp_path)
    assert result.returncode == 2 and "(torch.load weights_only=True: it would call posix.system (module posix, " \
        "which runs code or commands)) and needs full unpickling" in result.stderr, result.stderr
    assert not (tmp_path / "ran").exists()


def test_debug_shows_the_traceback(files, tmp_path):
    for args in (["--debug", "import-pickle", "IEMOCAP.pkl", "--out-dir", "o"],
                 ["import-pickle", "IEMOCAP.pkl", "--out-dir", "o", "--debug"]):
        result = ercpipe(*args, cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.startswith("Traceback (most recent call last):")
        assert result.stderr.rstrip().splitlines()[-1].startswith(
            "ercpipe.features.pickles.PickleNotAllowedError: refusing to unpickle IEMOCAP.pkl")


def test_command_line_errors_keep_argparse_form(tmp_path):
    result = ercpipe("import-pickle", "x.pkl", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "ercpipe import-pickle: error: the following arguments are required: --out-dir"


def _anchor_file(path: Path) -> Path:
    centers = torch.nn.functional.normalize(torch.randn(2, 512), dim=1)
    torch.save({"anchor_center": centers,
                "anchor_img_dict": {name: centers[k:k + 1].repeat(3, 1) for k, name in enumerate(("hap", "sad"))}},
               path)
    return path


def test_import_anchors_records_a_random_init_clip_given_as_none(tmp_path):
    """A command line has no YAML null: `--pretrained null` was refused as text and `""` as empty, so a demo set's
    round trip was recorded as OpenAI weights (the default)."""
    from ercpipe.anchors import read
    from ercpipe.cli import _pretrained

    rows = {name: torch.nn.functional.normalize(torch.randn(3, 512), dim=1) for name in ("hap", "sad")}
    torch.save({"anchor_center": torch.stack([r.mean(0) for r in rows.values()]),
                "anchor_img_dict": {name: {"feature": r} for name, r in rows.items()}}, tmp_path / "35_anchor.pt")
    result = ercpipe("import-anchors", "35_anchor.pt", "--classes", "hap", "sad", "--clip-model", "ViT-B-32",
                     "--pretrained", "none", "--out", "none.h5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert read(tmp_path / "none.h5").pretrained is None
    assert _pretrained("NULL") is None and _pretrained("laion2b_s34b_b79k") == "laion2b_s34b_b79k"
    ercpipe("import-anchors", "35_anchor.pt", "--classes", "hap", "sad", "--clip-model", "ViT-B-32", "--out",
            "openai.h5", cwd=tmp_path)
    assert read(tmp_path / "openai.h5").pretrained == "openai"


def test_a_file_of_another_kind_is_named_as_such_and_never_to_be_deleted(files, tmp_path):
    """Given a user's own file where a pipeline file is expected, the message used to end "delete it and rebuild
    it": a downloaded release file is not to be deleted."""
    _anchor_file(tmp_path / "35_anchor.pt")
    result = ercpipe("export-anchors", "35_anchor.pt", "--out", "new.pt", cwd=tmp_path)
    assert_one_line(result, "35_anchor.pt is not an anchor file: it is a zip archive (torch.save writes these), where "
                            "an HDF5 anchor file (anchors/SET/CLIP.h5) is expected; an official 35_anchor.pt is "
                            "converted first with `ercpipe import-anchors`")
    result = ercpipe("export-vega", "--manifest", "m.tsv", "--features", "text=IEMOCAP.pkl", "audio=IEMOCAP.pkl",
                     "visual=IEMOCAP.pkl", "--out", "o.pkl", cwd=tmp_path)
    assert result.returncode == 2 and "delete" not in result.stderr
    # The manifest is read first: a file that is no manifest is named, with the missing columns.
    (tmp_path / "m.tsv").write_text("split\tdialogue_id\tutterance_id\tspeaker\tlabel\ntrain\td\tu\tA\tjoy\n")
    result = ercpipe("export-vega", "--manifest", "m.tsv", "--features", "text=IEMOCAP.pkl", "audio=IEMOCAP.pkl",
                     "visual=IEMOCAP.pkl", "--out", "o.pkl", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "manifest m.tsv lacks column(s) [" in result.stderr and "'speaker_slot'" in result.stderr
    assert "give the manifest.tsv the pipeline wrote (features/DATASET/manifest.tsv" in result.stderr
    result = ercpipe("export-vega", "--manifest", "IEMOCAP.pkl", "--features", "text=a", "audio=b", "visual=c",
                     "--out", "o.pkl", cwd=tmp_path)
    assert result.returncode == 2
    assert "manifest IEMOCAP.pkl cannot be read as a tab-separated manifest (a pickle: UnicodeDecodeError)" in \
        result.stderr


def test_a_feature_pickle_given_as_a_feature_file_is_named():
    from ercpipe.io import features as feature_io

    with pytest.raises(feature_io.FeatureFileError) as err:
        feature_io.read(_pickle_file())
    assert "is not a feature file: it is a pickle" in str(err.value)
    assert "ercpipe import-pickle" in str(err.value) and "delete" not in str(err.value)


def _pickle_file() -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "IEMOCAP.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    return path


def test_arguments_that_would_overwrite_or_misplace_outputs_are_refused(files, tmp_path):
    (tmp_path / "adir").mkdir()
    _anchor_file(tmp_path / "35_anchor.pt")
    result = ercpipe("import-anchors", "35_anchor.pt", "--classes", "hap", "sad", "--clip-model", "ViT-B-32",
                     "--out", "adir", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "ercpipe import-anchors: error: --out adir is a folder; give the path " \
                                             "of a file to write"
    result = ercpipe("export-vega", "--manifest", "m.tsv", "--features", "text=a.h5", "text=b.h5", "--out", "o.pkl",
                     cwd=tmp_path)
    assert result.stderr.splitlines()[-1] == ("ercpipe export-vega: error: --features gives text twice (a.h5 and "
                                              "b.h5); give one file per modality")
    result = ercpipe("import-pickle", "IEMOCAP.pkl", "--allow-pickle", "--out-dir", "o", "--setting", "../../x",
                     cwd=tmp_path)
    assert result.stderr.splitlines()[-1].startswith("ercpipe import-pickle: error: --setting '../../x' becomes a "
                                                     "file name")
    result = ercpipe("import-pickle", "IEMOCAP.pkl", "--allow-pickle", "--out-dir", "o", "--valid-fraction", "0.1",
                     "--valid-seed", "-1", cwd=tmp_path)
    assert result.stderr.splitlines()[-1] == "ercpipe import-pickle: error: --valid-seed must be a whole number >= 0, " \
                                             "got -1"
    result = ercpipe("import-anchors", "35_anchor.pt", "--classes", "hap", "sad", "--clip-model", "ViT-B-23",
                     "--out", "a.h5", cwd=tmp_path)
    assert result.returncode == 2 and "CLIP 'ViT-B-23' is not a model open_clip knows (did you mean" in result.stderr
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "o").exists()
    # --out naming an input replaced it: the conversation with its predictions, a manifest with a pickle, a model.
    (tmp_path / "talk.csv").write_text("speaker,text\nA,hi\n")
    (tmp_path / "run" / "seed0").mkdir(parents=True)
    (tmp_path / "run" / "seed0" / "predictions.tsv").write_text("the workflow's\n")
    for args, refusal in (
            (["predict", "--checkpoint", "c.pt", "--conversation", "talk.csv", "--out", "./talk.csv"],
             "ercpipe predict: error: --out ./talk.csv would replace --conversation talk.csv; write the output to "
             "another file"),
            (["predict", "--checkpoint", "run", "--conversation", "talk.csv", "--out", "run/seed0/model.pt"],
             "ercpipe predict: error: --out run/seed0/model.pt would replace a file the workflow wrote beside "
             "--checkpoint run; write the output to another file"),
            (["predict", "--checkpoint", "run/seed0/model.pt", "--conversation", "talk.csv", "--out",
              "run/seed0/predictions.tsv"], "ercpipe predict: error: --out run/seed0/predictions.tsv would replace a "
                                            "file the workflow wrote beside --checkpoint run/seed0/model.pt; write the "
                                            "output to another file"),
            (["export-vega", "--manifest", "m.tsv", "--features", "text=a.h5", "audio=b.h5", "visual=c.h5", "--out",
              "b.h5"], "ercpipe export-vega: error: --out b.h5 would replace --features b.h5; write the output to "
                       "another file"),
            (["export-anchors", "35_anchor.pt", "--out", "35_anchor.pt"],
             "ercpipe export-anchors: error: --out 35_anchor.pt would replace the input file 35_anchor.pt; write the "
             "output to another file")):
        result = ercpipe(*args, cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.splitlines()[-1] == refusal, result.stderr
    assert (tmp_path / "talk.csv").read_text() == "speaker,text\nA,hi\n"
    assert (tmp_path / "run" / "seed0" / "predictions.tsv").read_text() == "the workflow's\n"
    # A selection's chosen runs are in a sibling folder: its model.pt was overwritten with the predictions.
    (tmp_path / "run" / "seed0" / "model.pt").write_bytes(b"the workflow's model")
    (tmp_path / "pick").mkdir()
    (tmp_path / "pick" / "summary.json").write_text(json.dumps({
        "seeds": [0], "runs": [str(tmp_path / "run" / "seed0")], "selection": {"chosen": "run"}}))
    result = ercpipe("predict", "--checkpoint", "pick", "--conversation", "talk.csv", "--out", "run/seed0/model.pt",
                     cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.splitlines()[-1] == (
        f"ercpipe predict: error: --out run/seed0/model.pt would replace a file of the run {tmp_path / 'run' / 'seed0'}"
        ", which --checkpoint pick names; write the output to another file"), result.stderr
    assert (tmp_path / "run" / "seed0" / "model.pt").read_bytes() == b"the workflow's model"
    (tmp_path / "mine.tsv").write_text("an older prediction of mine\n")
    for out in ("run/new.tsv", "mine.tsv"):  # a new file in a results folder, an old output beside a checkpoint
        result = ercpipe("predict", "--checkpoint", "run" if out.startswith("run") else "c.pt", "--conversation",
                         "talk.csv", "--out", out, cwd=tmp_path)
        assert "would replace" not in result.stderr, result.stderr


def test_check_config_names_the_line_snakemake_does_not(tmp_path):
    """Snakemake reads a --configfile before the workflow runs and says only "Config file is not valid JSON or
    YAML"; `ercpipe check-config` is where the README sends the user for the line."""
    repo = Path(__file__).resolve().parents[1]
    good = ercpipe("check-config", str(repo / "config.yaml"), str(repo / "workflow/configs/meld_text.yaml"),
                   cwd=tmp_path)
    assert good.returncode == 0 and good.stdout.count("YAML, keys, schema, names and presets are fine") == 2, \
        good.stderr
    # A name that cannot be a folder name and a misspelt preset stop the run: said without the workflow too.
    demo = yaml.safe_load((repo / "config.yaml").read_text())
    spaced = {**demo, "datasets": {"meld demo" if k == "meld_demo" else k: v for k, v in demo["datasets"].items()}}
    (tmp_path / "name.yaml").write_text(yaml.safe_dump(spaced))
    result = ercpipe("check-config", "name.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "name.yaml: datasets.meld demo:" in result.stderr, result.stderr
    experiment = next(iter(demo["experiments"]))
    misspelt = {**demo, "experiments": {**demo["experiments"], experiment: {
        **demo["experiments"][experiment], "preset": "offical"}}}
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(misspelt))
    result = ercpipe("check-config", "preset.yaml", cwd=tmp_path)
    assert result.returncode == 2 and f"preset.yaml: experiments.{experiment}: " in result.stderr, result.stderr
    assert "offical" in result.stderr
    recipe = yaml.safe_load((repo / "workflow/configs/meld_text.yaml").read_text())
    recipe["selections"]["text_recipe"]["search"]["experiment"]["preset"] = "sdt-vega-bakbone"
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(recipe))
    result = ercpipe("check-config", "search.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "search.yaml: selections.text_recipe.search.experiment: " in result.stderr
    assert "sdt-vega-bakbone" in result.stderr
    # Said "schema ... fine" for what snakemake -n refuses: a key the experiments a search makes may not have, a
    # misspelt feature-setting key.
    recipe = yaml.safe_load((repo / "workflow/configs/meld_text.yaml").read_text())
    recipe["selections"]["text_recipe"]["search"]["experiment"]["epochs"] = 5
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(recipe))
    result = ercpipe("check-config", "search.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "search.yaml: config does not match workflow/schemas/config.schema.yaml: " \
        "selections.text_recipe.search.experiment: Additional properties are not allowed ('epochs' was " \
        "unexpected) (in every experiment this search makes)" in result.stderr, result.stderr
    setting = next(iter(demo["features"]["text"]))
    demo["features"]["text"][setting]["poolng"] = "mean"
    (tmp_path / "setting.yaml").write_text(yaml.safe_dump(demo))
    result = ercpipe("check-config", "setting.yaml", cwd=tmp_path)
    assert result.returncode == 2 and f"setting.yaml: features.text.{setting}.poolng: unknown key" in result.stderr, \
        result.stderr
    # Dataset keys that need no file to check (another format's key, a CSV without classes): snakemake -n refused
    # them after check-config said "fine". A required key may come from another --configfile that Snakemake merges
    # with this one, so it is said, not refused.
    (tmp_path / "classes.yaml").write_text("datasets:\n  mine: {format: csv, manifest: m.csv}\n")
    result = ercpipe("check-config", "classes.yaml", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.splitlines()[1] == (
        "classes.yaml: not given here, so another --configfile must give it (else snakemake -n refuses): "
        "datasets.mine.classes: required for format csv (see docs/manifest.md)"), result.stdout + result.stderr
    (tmp_path / "relabel.yaml").write_text("datasets:\n  m: {format: meld, root: raw/MELD.Raw, relabel: {sur: hap}}\n")
    result = ercpipe("check-config", "relabel.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "relabel.yaml: datasets.m.relabel: not a setting of format meld" in result.stderr
    (tmp_path / "bad.yaml").write_text("datasets:\n  mine: {format: csv, manifest: m.csv\nexperiments: {}\n")
    assert_one_line(ercpipe("check-config", "bad.yaml", cwd=tmp_path),
                    "bad.yaml, line 3, column 12: expected ',' or '}', but got ':' (while parsing a flow mapping "
                    "on line 2)")
    (tmp_path / "schema.yaml").write_text("datasets:\n  mine: {format: csvv, manifest: m.csv}\n")
    result = ercpipe("check-config", "schema.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "schema.yaml: config does not match" in result.stderr
    assert "datasets.mine.format: 'csvv' is not one of" in result.stderr


def test_the_accuracy_printed_after_predict_is_per_split_when_several_are_predicted():
    """`--split test valid` printed one accuracy over both (valid chose the epoch, test did not)."""
    import pandas as pd

    from ercpipe.cli import _accuracy_note

    frame = pd.DataFrame({"split": ["valid", "valid", "test", "test", "test", "test"],
                          "label": ["joy", "sad", "joy", "sad", "sad", ""],
                          "prediction": ["joy", "sad", "joy", "joy", "joy", "sad"]})
    assert _accuracy_note(frame) == "; accuracy on the labelled: valid 100.0% (2), test 33.3% (3)"
    assert _accuracy_note(frame[frame["split"] == "test"]) == "; accuracy on the 3 labelled: 33.3%"
    assert _accuracy_note(frame[frame["label"] == ""]) == ""



# A command run by `ercpipe` (main) in a process of its own; SIGNAL is the one the test sends.
_COMMAND = """
import signal, sys, time
from pathlib import Path
from ercpipe import cli
SIGNAL = getattr(signal, sys.argv[1])

class SignalledWhileCollected:
    def __del__(self):
        signal.raise_signal(SIGNAL)
        sum(range(1000))  # the handler runs here, inside __del__, whose exception Python drops

def command(args, parser):
{body}

cli._check_config = command
status = cli.main(["check-config", sys.argv[2]])
time.sleep(1.0)  # past a repeat's delay: none comes once the command has returned
print("status", status, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,
      signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""
_STATUS = {"SIGTERM": "143", "SIGINT": "130"}
_SAID = {"SIGTERM": "ercpipe: stopped by SIGTERM", "SIGINT": "ercpipe: stopped by SIGINT (Ctrl-C)"}


def _run_command(body: str, signal_name: str, tmp_path) -> subprocess.CompletedProcess:
    code = _COMMAND.format(body="".join(f"    {line}\n" for line in body.strip().splitlines()))
    done = subprocess.run([sys.executable, "-c", code, signal_name, str(tmp_path / "out.txt")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(_SAID[signal_name]) == 1, done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    return done


_LOST_IN_A_DEL = "SignalledWhileCollected()"
_LOST_IN_A_LIBRARY = """
try:
    signal.raise_signal(SIGNAL)
    sum(range(1000))
except BaseException:  # as PyAV's resampler loses one raised while it ends a frame
    pass
"""


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("lost", [_LOST_IN_A_DEL, _LOST_IN_A_LIBRARY], ids=["in_a_del", "in_a_library"])
def test_a_stop_that_is_lost_still_stops_the_command(lost, signal_name, tmp_path):
    """The handler's exception raised while a `__del__` runs is dropped by Python, and PyAV loses one raised while
    it ends a frame: predict went on, wrote its output and exited 0 (SIGTERM, and Ctrl-C also in export-vega and
    import-pickle). The stop is asked again; the command says it once and exits 143 or 130."""
    done = _run_command(lost + "\nfor _ in range(300):\n    time.sleep(0.01)\nprint('went on')", signal_name,
                        tmp_path)
    assert done.stdout.split() == ["status", _STATUS[signal_name], "True", "True"]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_the_repeated_stop_leaves_the_cleanup_of_the_first_alone(signal_name, tmp_path):
    """The stop is asked again until the command has ended; a repeat during the cleanup that the first one runs
    (here 1.5 s, three repeats) does not interrupt it."""
    done = _run_command("""
try:
    signal.raise_signal(SIGNAL)
    sum(range(1000))
finally:
    start = time.monotonic()
    while time.monotonic() - start < 1.5:
        sum(range(1000))
    print("cleaned up")
""", signal_name, tmp_path)
    assert done.stdout.split() == ["cleaned", "up", "status", _STATUS[signal_name], "True", "True"]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_stop_as_the_command_ends_gives_its_status(signal_name, tmp_path):
    """A stop that comes too late to stop anything (dropped in the command's last frames) still sets the exit
    status, as a scheduler's time limit must show, and its repeats do not outlive the command; the outputs are
    complete (written atomically)."""
    done = _run_command('Path(args.files[0]).write_text("done\\n")\nSignalledWhileCollected()', signal_name,
                        tmp_path)
    assert done.stdout.split() == ["status", _STATUS[signal_name], "True", "True"]
    assert (tmp_path / "out.txt").read_text() == "done\n"


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_library_error_made_of_the_stop_is_the_stop(signal_name, tmp_path):
    """A library may turn the interruption into an error of its own (import-anchors exited 1 with a traceback
    after Ctrl-C): after a stop, how the command ended is the stop."""
    done = _run_command("""
try:
    signal.raise_signal(SIGNAL)
    sum(range(1000))
except BaseException as err:
    raise RuntimeError("interrupted") from err
""", signal_name, tmp_path)
    assert done.stdout.split() == ["status", _STATUS[signal_name], "True", "True"]
