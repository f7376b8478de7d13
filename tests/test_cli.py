"""`ercpipe` on bad input: one line `ercpipe: error: <message>` naming the file and the fix, exit status 2,
no traceback (unless --debug)."""
from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
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
