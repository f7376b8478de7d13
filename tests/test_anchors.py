"""VEGA anchors: image-set scanning, real open_clip encoding (random init, offline), the HDF5 and official
formats, and anchor mining from training faces (with the real MTCNN on a real video once)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from ercpipe import anchors
from ercpipe.anchors import clip as clip_mod
from ercpipe.anchors.images import check_mined_unchanged
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.io.media import MediaError
from ercpipe.mining_setting import mining_params
from ercpipe.labels import IEMOCAP_CLASSES, MELD_CLASSES, canonical_emotion

TINY = {"model": "ViT-S-32-alt", "pretrained": None}  # smallest open_clip ViT here: 256-d, ~20 ms per image
# Folder name -> number of images. "joy" and "angry" are aliases; "surprise" is a class nobody asks for here.
SET_LAYOUT = {"joy": 3, "sad": 3, "angry": 2, "surprise": 1}
MOUTH = {"happy": "smile", "sad": "frown", "anger": "flat", "surprise": "open", "neutral": "flat"}


# ----------------------------------------------------------------------------------------- image helpers

def draw_face(path: Path, emotion: str, rng: np.random.Generator, size: int = 96) -> None:
    """A simple drawn face whose mouth depends on the emotion; colours and position vary per image."""
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(40, 120, 3)))
    draw = ImageDraw.Draw(image)
    dx, dy = (int(v) for v in rng.integers(-6, 7, 2))
    draw.ellipse((18 + dx, 12 + dy, 78 + dx, 88 + dy), fill=tuple(int(v) for v in rng.integers(150, 240, 3)))
    for ex in (36, 60):
        draw.ellipse((ex - 6 + dx, 38 + dy, ex + 6 + dx, 46 + dy), fill="white")
        draw.ellipse((ex - 2 + dx, 40 + dy, ex + 2 + dx, 44 + dy), fill="black")
    mouth = (34 + dx, 60 + dy, 62 + dx, 74 + dy)
    kind = MOUTH.get(emotion, "flat")
    if kind == "smile":
        draw.arc(mouth, 10, 170, fill="darkred", width=3)
    elif kind == "frown":
        draw.arc((mouth[0], mouth[1] + 8, mouth[2], mouth[3] + 8), 190, 350, fill="darkred", width=3)
    elif kind == "open":
        draw.ellipse((40 + dx, 60 + dy, 56 + dx, 76 + dy), fill="darkred")
    else:
        draw.line((mouth[0], 68 + dy, mouth[2], 68 + dy), fill="darkred", width=3)
    image.save(path)


def make_image_set(root: Path, layout: dict[str, int], seed: int = 0) -> Path:
    """root/{folder}/img{i}.png; uses ercpipe.synthetic.faces when it exists, else draws faces here."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    try:
        from ercpipe.synthetic.faces import make_anchor_image_set
    except ImportError:
        make_anchor_image_set = None
    for folder, n in layout.items():
        emotion = canonical_emotion(folder)
        target = root / folder
        if make_anchor_image_set is not None:
            scratch = root.parent / f".drawing-{root.name}-{folder}"
            make_anchor_image_set(scratch, [emotion], n, seed)
            made = sorted(p for p in scratch.rglob("*") if p.suffix.lower() in anchors.IMAGE_EXTENSIONS)[:n]
            assert len(made) == n, f"faces.make_anchor_image_set made {len(made)} images for {emotion}"
            target.mkdir()
            for i, p in enumerate(made):
                shutil.copy(p, target / f"img{i}{p.suffix}")
            shutil.rmtree(scratch)
        else:
            target.mkdir()
            for i in range(n):
                draw_face(target / f"img{i}.png", emotion, rng)
    return root


def direct_embeddings(model_name: str, seed_or_state, paths: list[Path]) -> np.ndarray:
    """Reference embeddings computed straight with open_clip (seeded init or a given state dict)."""
    if isinstance(seed_or_state, int):
        torch.manual_seed(seed_or_state)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    if not isinstance(seed_or_state, int):
        model.load_state_dict(seed_or_state)
    model.eval()
    with torch.no_grad():
        x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
        emb = model.encode_image(x)
    return (emb / emb.norm(dim=-1, keepdim=True)).numpy()


# ----------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def image_set(tmp_path_factory) -> Path:
    # The root's own name contains "sad": the official substring rule would put every image into "sad".
    root = make_image_set(tmp_path_factory.mktemp("sad_root") / "demo", SET_LAYOUT)
    (root / "README.txt").write_text("not an image\n")
    (root / "joy" / "notes.txt").write_text("not an image\n")
    (root / "joy" / "nested").mkdir()
    draw_face(root / "joy" / "nested" / "deep.png", "sad", np.random.default_rng(9))
    return root


@pytest.fixture(scope="session")
def tiny_anchor_file(image_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("anchors") / "demo" / f"{anchors.clip_name(TINY)}.h5"
    # IEMOCAP spellings, in an order different from the folder listing, to check label order is kept.
    anchors.encode_image_set(image_set, ["sad", "hap", "ang"], TINY, out, device="cpu", batch_size=2)
    return out


# ----------------------------------------------------------------------------------------- scanning

def test_scan_maps_aliases_uses_parent_folder_and_logs_ignored(image_set, caplog):
    caplog.set_level(logging.INFO, logger="ercpipe.anchors")
    meld = anchors.scan_image_set(image_set, ["joy", "sadness", "anger"])
    iemocap = anchors.scan_image_set(image_set, ["hap", "sad", "ang"])
    assert list(meld) == ["happy", "sad", "anger"] == list(iemocap)
    assert meld == iemocap  # one folder "joy" serves MELD's joy and IEMOCAP's hap
    assert [p.name for p in meld["happy"]] == ["img0.png", "img1.png", "img2.png"]  # not nested/deep.png
    assert all(p.parent.name == "joy" for p in meld["happy"])
    assert [len(v) for v in meld.values()] == [3, 3, 2]
    text = caplog.text
    for ignored in ("README.txt", "surprise/", "joy/notes.txt", "joy/nested/"):
        assert ignored in text
    assert "different numbers of images" in text  # 3, 3, 2


def test_scan_reports_every_bad_input_at_once(tmp_path):
    root = make_image_set(tmp_path / "bad", {"happy": 2, "sad": 0, "anger": 2})
    (root / "sad" / "notes.txt").write_text("text only")
    (root / "happy" / "garbage.png").write_bytes(b"this is not a png")
    good = (root / "anger" / "img0.png").read_bytes()
    (root / "anger" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "Neutral_faces").mkdir()  # misnamed: the message shows it beside the missing class
    with pytest.raises(anchors.AnchorImageError) as err:
        anchors.scan_image_set(root, ["neutral", "happy", "sad", "anger"])
    message = str(err.value)
    assert "no folder for class 'neutral'" in message and f"{root}/neutral/" in message and "neu" in message
    assert "folders there that name no class of the dataset: Neutral_faces" in message
    # Its one file is of a format that is not read (a phone's .HEIC alike): named, with the fix.
    assert f"class folder {root / 'sad'} holds no images" in message
    assert "it holds 1 file(s) of other formats (notes.txt): convert them to one of those formats" in message
    assert f"unreadable image {root / 'happy' / 'garbage.png'}" in message
    assert f"unreadable image {root / 'anger' / 'truncated.png'}" in message
    assert str(root / "anger" / "img0.png") not in message


def test_deep_pixels_broken_links_and_sub_folders(tmp_path):
    """A 16-bit photograph is encoded as its 8-bit version (Pillow's own conversion would make it white);
    float pixels, a broken link and a class whose images sit in a sub-folder are named in the error."""
    root = make_image_set(tmp_path / "set", {"happy": 1, "sad": 1})
    eight = np.asarray(Image.open(root / "happy" / "img0.png").convert("L"))
    Image.fromarray(eight.astype(np.uint16) * 257).save(root / "sad" / "deep.png")
    Image.open(root / "happy" / "img0.png").convert("L").save(root / "sad" / "flat.png")
    assert Image.open(root / "sad" / "deep.png").mode.startswith("I")
    from ercpipe.anchors.images import encode_images

    model, preprocess, _ = clip_mod.load_clip(anchors.clip_settings(TINY), torch.device("cpu"))
    deep, flat = encode_images([root / "sad" / "deep.png", root / "sad" / "flat.png"], model, preprocess,
                                       torch.device("cpu"))
    np.testing.assert_allclose(deep, flat, atol=1e-6)
    Image.fromarray(eight.astype(np.float32) / 255).save(root / "sad" / "float.tif")
    (root / "sad" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "neutral" / "more").mkdir(parents=True)
    shutil.copy(root / "happy" / "img0.png", root / "neutral" / "more" / "img0.png")
    with pytest.raises(anchors.AnchorImageError) as err:
        anchors.scan_image_set(root, ["happy", "sad", "neutral"])
    message = str(err.value)
    assert f"unreadable image {root / 'sad' / 'float.tif'} (floating-point pixels" in message
    assert f"broken link {root / 'sad' / 'gone.png'}" in message
    assert f"class folder {root / 'neutral'} holds no images" in message and "['neutral/more/'] are not read" in message
    assert "deep.png" not in message


def anchor_sets_config(workdir: Path, anchor_sets: dict) -> Path:
    """A config of a two-utterance text-only CSV dataset with one SDT-VEGA experiment per anchor set."""
    from workflow_run import write_config

    (workdir / "m.csv").write_text("dialogue_id,utterance_id,split,speaker,label,text\nd1,u0,train,A,happy,hi\n"
                                   "d2,u1,test,A,sad,no\n")
    return write_config(workdir, {
        "datasets": {"mine": {"format": "csv", "manifest": "m.csv", "classes": ["happy", "sad"],
                              "modalities": ["text"]}},
        "features": {"text": {"minilm": {"model": "packaged:minilm"}}},
        "anchors": anchor_sets,
        "experiments": {name: {"dataset": "mine", "features": {"text": "minilm"}, "anchors": name,
                               "preset": "demo", "seeds": [0]} for name in anchor_sets}})


def test_a_changed_image_re_encodes_the_set(tmp_path):
    """The image folder is one directory input whose own timestamp does not change when an image inside a
    class folder is added, replaced or deleted; its digest is a param, so each of those re-runs encode_anchors
    (and nothing else), and the anchor file then counts the images there are."""
    from workflow_run import planned_jobs, snakemake

    make_image_set(tmp_path / "faces", {"happy": 2, "sad": 2})
    configfile = anchor_sets_config(tmp_path, {"faces": {"images": "faces", "clip": TINY}})
    target = f"anchors/faces/{anchors.clip_name(TINY)}.h5"
    snakemake(tmp_path, configfile, "--cores", "1", target)
    (tmp_path / "faces" / "happy" / ".DS_Store").write_bytes(b"Finder")  # not read: re-encodes nothing
    assert planned_jobs(snakemake(tmp_path, configfile, "-n", target).stdout) == {}
    # Nor beside the class folders (the set's folder timestamp changed: every VEGA experiment was re-trained).
    (tmp_path / "faces" / ".DS_Store").write_bytes(b"Finder")
    (tmp_path / "faces" / "README.txt").write_text("where the photos come from\n")
    (tmp_path / "faces" / "surprise").mkdir()
    assert planned_jobs(snakemake(tmp_path, configfile, "-n", target).stdout) == {}
    shutil.copy(tmp_path / "faces" / "happy" / "img0.png", tmp_path / "faces" / "happy" / "img2.png")
    assert planned_jobs(snakemake(tmp_path, configfile, "-n", target).stdout) == {"encode_anchors": 1}
    snakemake(tmp_path, configfile, "--cores", "1", target)
    assert anchors.read(tmp_path / target).counts() == {"happy": 3, "sad": 2}
    (tmp_path / "faces" / "sad" / "img1.png").unlink()
    assert planned_jobs(snakemake(tmp_path, configfile, "-n", target).stdout) == {"encode_anchors": 1}
    snakemake(tmp_path, configfile, "--cores", "1", target)
    assert anchors.read(tmp_path / target).counts() == {"happy": 3, "sad": 1}


def test_image_sets_at_the_documented_places_encode_once(tmp_path):
    """anchors/{set}/images (README) used to be taken for the synthetic rule's output (KeyError 'synthetic' in
    `snakemake -n`), and anchors/{set}/ itself (docs/anchors.md) re-encoded on every call: the encoder's own
    output there changed the folder's digest."""
    from workflow_run import planned_jobs, snakemake

    make_image_set(tmp_path / "anchors" / "faces" / "images", {"happy": 1, "sad": 1})
    make_image_set(tmp_path / "anchors" / "flat", {"happy": 1, "sad": 1})
    configfile = anchor_sets_config(tmp_path, {"faces": {"images": "anchors/faces/images", "clip": TINY},
                                               "flat": {"images": "anchors/flat", "clip": TINY},
                                               "drawn": {"synthetic": {"per_class": 1, "seed": 0}, "clip": TINY}})
    targets = [f"anchors/{name}/{anchors.clip_name(TINY)}.h5" for name in ("faces", "flat", "drawn")]
    assert planned_jobs(snakemake(tmp_path, configfile, "-n", *targets).stdout) == {
        "encode_anchors": 3, "synthetic_anchor_images": 1}
    snakemake(tmp_path, configfile, "--cores", "1", *targets)
    assert planned_jobs(snakemake(tmp_path, configfile, "-n", *targets).stdout) == {}
    assert anchors.read(tmp_path / targets[1]).counts() == {"happy": 1, "sad": 1}


def test_a_photo_stored_sideways_with_an_exif_orientation_is_encoded_upright(tmp_path):
    """A phone photo is stored sideways with an EXIF Orientation tag that every viewer applies; the encoder took
    the stored pixels, and nothing said so."""
    from PIL import Image

    from ercpipe.anchors.images import _as_rgb, image_set_digest

    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:10, :30] = (255, 0, 0)  # a red block at the top left: not symmetric under a turn
    root = make_image_set(tmp_path / "faces", {"happy": 1, "sad": 1})
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to view
    stored.save(root / "happy" / "phone.jpg", exif=exif.tobytes(), quality=100)
    with Image.open(root / "happy" / "phone.jpg") as image:
        pixels = np.asarray(_as_rgb(image)).astype(int)
    assert pixels.shape == upright.shape and np.abs(pixels - upright).mean() < 3  # JPEG: close, not equal
    # What encode_anchors' params hold of it, so that a set encoded sideways before is encoded again; a set
    # without such photos keeps its digest (nothing re-encodes on upgrade).
    assert image_set_digest(root, ["hap", "sad"]).endswith(" upright:happy/phone.jpg")
    plain = make_image_set(tmp_path / "plain", {"happy": 1})
    assert " " not in image_set_digest(plain, ["hap"])


def test_an_image_name_that_is_not_utf8_is_named_before_any_encoding(tmp_path, caplog):
    """A name from an archive made on Windows (b'caf\\xe9.png') crashed `snakemake -n` in the folder's digest, and
    the encoder only after encoding every image, with a UnicodeEncodeError naming no file."""
    import os

    from ercpipe.anchors.images import image_set_digest

    root = make_image_set(tmp_path / "faces", {"happy": 1, "sad": 1})
    shutil.copy(root / "happy" / "img0.png", os.fsencode(root / "happy") + b"/caf\xe9.png")
    (root / "sad" / "notes.docx").write_bytes(b"PK")
    assert image_set_digest(root, ["hap", "sad"])
    with pytest.raises(anchors.AnchorImageError, match=r"image .*happy/caf\\xe9.png has a name that is not UTF-8 "
                                                       r".*: rename it"):
        anchors.scan_image_set(root, ["hap", "sad"])
    (Path(os.fsdecode(os.fsencode(root / "happy") + b"/caf\xe9.png"))).unlink()
    with caplog.at_level(logging.WARNING):
        anchors.scan_image_set(root, ["hap", "sad"])
    assert "ignored 1 file(s) in class folders that are not image files" in caplog.text
    assert "sad/notes.docx" in caplog.text
    # What Windows leaves in a folder it showed is no image to convert.
    (root / "sad" / "Thumbs.db").write_bytes(b"\xd0\xcf")
    (root / "happy" / "desktop.ini").write_text("[.ShellClassInfo]")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        anchors.scan_image_set(root, ["hap", "sad"])
    assert "Thumbs.db" not in caplog.text and "desktop.ini" not in caplog.text and "sad/notes.docx" in caplog.text


def test_scan_rejects_two_folders_for_one_class_and_a_missing_set(tmp_path):
    root = make_image_set(tmp_path / "dup", {"happy": 1, "joy": 1})
    with pytest.raises(anchors.AnchorImageError, match="'happy' and 'joy' both hold class 'happy'"):
        anchors.scan_image_set(root, ["hap"])
    # ... said with the set's other problems, not alone (a missing class was found one fix later).
    with pytest.raises(anchors.AnchorImageError, match=r"both hold class 'happy': merge them into one folder\n  "
                                                       r"no folder for class 'sad'"):
        anchors.scan_image_set(root, ["hap", "sad"])
    with pytest.raises(anchors.AnchorImageError, match="is not a folder"):
        anchors.scan_image_set(tmp_path / "nowhere", ["hap"])


# ----------------------------------------------------------------------------------------- clip settings

def test_clip_names_settings_and_quick_gelu():
    assert anchors.clip_name({"model": "ViT-B-32", "pretrained": None}) == "ViT-B-32"
    assert anchors.clip_name({"model": "ViT-B/32", "pretrained": "openai"}) == "ViT-B-32_openai"
    assert anchors.clip_name({"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}) == "ViT-B-32_laion2b-s34b-b79k"
    assert (anchors.clip_name({"model": "ViT-L-14-336", "pretrained": "/w/open_clip_pytorch_model.bin",
                               "quick_gelu": True}) == "ViT-L-14-336_open-clip-pytorch-model_quickgelu")
    assert anchors.clip_settings({}) == {"model": "ViT-B-32", "pretrained": "openai", "quick_gelu": None}
    with pytest.raises(ValueError, match="unknown clip setting"):
        anchors.clip_settings({"model": "ViT-B-32", "weights": "x"})
    # OpenAI weights were trained with QuickGELU; open_clip 3.x would only warn, so the tag decides.
    assert anchors.resolve_quick_gelu({"model": "ViT-B-32", "pretrained": "openai"}) is True
    assert anchors.resolve_quick_gelu({"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}) is False
    assert anchors.resolve_quick_gelu({"model": "ViT-B-32", "pretrained": None}) is False
    assert anchors.resolve_quick_gelu({"model": "ViT-B-32-quickgelu", "pretrained": None}) is True
    assert anchors.resolve_quick_gelu({"model": "ViT-B-32", "pretrained": "openai", "quick_gelu": False}) is False
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        anchors.resolve_quick_gelu({"model": "ViT-Q-99", "pretrained": None})


def test_clip_weights_errors(image_set, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        anchors.encode_image_set(image_set, ["hap"], {**TINY, "pretrained": str(tmp_path / "missing.safetensors")},
                                 tmp_path / "x.h5", device="cpu")
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        anchors.encode_image_set(image_set, ["hap"], {**TINY, "pretrained": "no-such-tag"}, tmp_path / "x.h5",
                                 device="cpu")
    scripted = tmp_path / "ViT-S-32-alt.pt"  # a TorchScript archive, like OpenAI's original checkpoints
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(scripted))
    with pytest.raises(RuntimeError, match="could not load CLIP checkpoint .*TorchScript archives .* are refused"):
        anchors.encode_image_set(image_set, ["hap"], {**TINY, "pretrained": str(scripted)}, tmp_path / "x.h5",
                                 device="cpu")
    # Not a checkpoint at all: open_clip's KeyError was the only message.
    text = tmp_path / "open_clip_pytorch_model.bin"
    text.write_text("these are not weights\n")
    with pytest.raises(RuntimeError, match=r"could not load CLIP checkpoint .*open_clip_pytorch_model.bin into "
                                           r"ViT-S-32-alt \(\w+: .*\)\. Give an open_clip state dict"):
        anchors.encode_image_set(image_set, ["hap"], {**TINY, "pretrained": str(text)}, tmp_path / "x.h5",
                                 device="cpu")
    assert not (tmp_path / "x.h5").exists()


# ----------------------------------------------------------------------------------------- encoding + HDF5

def test_encoded_anchor_file(tiny_anchor_file, image_set):
    a = anchors.read(tiny_anchor_file)
    assert a.class_names == ["sad", "happy", "anger"]  # dataset label order, canonical names
    assert a.dataset_labels == ["sad", "hap", "ang"]
    assert (a.clip_model, a.pretrained, a.dim, a.clip_name) == ("ViT-S-32-alt", None, 256, "ViT-S-32-alt")
    assert a.setting_hash == feature_io.settings_hash(anchors.clip_settings(TINY))
    assert a.versions["open_clip_torch"] == open_clip.__version__
    assert a.counts() == {"sad": 3, "happy": 3, "anger": 2}
    assert a.image_paths["happy"] == ["joy/img0.png", "joy/img1.png", "joy/img2.png"]
    assert a.centers.dtype == np.float32 and a.centers.shape == (3, 256)
    for i, name in enumerate(a.class_names):
        rows = a.image_features[name]
        assert rows.dtype == np.float32 and rows.shape == (a.counts()[name], 256)
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(a.centers[i], rows.mean(axis=0), atol=1e-6)  # mean, not renormalized
        assert np.linalg.norm(a.centers[i]) < 1.0
    # Exactly open_clip's own preprocessing + image tower, seeded init (so every run gives the same model).
    paths = [image_set / p for p in a.image_paths["happy"]]
    np.testing.assert_allclose(a.image_features["happy"], direct_embeddings("ViT-S-32-alt", 0, paths), atol=1e-5)
    assert not np.allclose(a.image_features["happy"][0], a.image_features["sad"][0])


def test_for_classes_maps_dataset_labels(tiny_anchor_file):
    a = anchors.read(tiny_anchor_file)
    centers, feats = a.for_classes(["anger", "joy", "sadness"])  # MELD spellings, another order
    np.testing.assert_array_equal(centers, a.centers[[2, 1, 0]])
    assert [f.shape[0] for f in feats] == [2, 3, 3]
    np.testing.assert_array_equal(feats[1], a.image_features["happy"])
    with pytest.raises(anchors.AnchorFileError, match=r"no anchors for class\(es\) 'neu' \(as 'neutral'\)"):
        a.for_classes(["hap", "neu"])
    # A set whose stored names are a dataset's spellings (written by hand) is matched the same way.
    hand = dataclasses.replace(a, class_names=["Sad", "joy", "angry"],
                               image_features={"Sad": a.image_features["sad"], "joy": a.image_features["happy"],
                                               "angry": a.image_features["anger"]})
    centers, feats = hand.for_classes(["anger", "hap", "sad"])
    np.testing.assert_array_equal(centers, a.centers[[2, 1, 0]])
    np.testing.assert_array_equal(feats[1], a.image_features["happy"])
    twice = dataclasses.replace(hand, class_names=["Sad", "joy", "happy"],
                                image_features={**hand.image_features, "happy": a.image_features["happy"]})
    with pytest.raises(anchors.AnchorFileError, match=r"one emotion under two names .*'happy', 'happy'"):
        twice.for_classes(["hap", "sad"])


def test_read_checks_clip_model_and_file(tiny_anchor_file, tmp_path):
    assert anchors.read(tiny_anchor_file, expect_clip_model="ViT-S-32-alt").dim == 256
    with pytest.raises(anchors.AnchorFileError, match="encoded with CLIP ViT-S-32-alt .* expects ViT-L-14-336"):
        anchors.read(tiny_anchor_file, expect_clip_model="ViT-L-14-336")
    with pytest.raises(anchors.AnchorFileError, match="does not exist"):
        anchors.read(tmp_path / "none.h5")
    other = tmp_path / "features.h5"
    attrs = {"modality": "visual", "extractor": "t", "model": "t", "settings": {}}
    feature_io.write(other, feature_io.FeatureSet(["u1"], np.zeros((1, 2)), np.ones(1, bool), attrs))
    with pytest.raises(anchors.AnchorFileError, match="not an ercpipe anchor file"):
        anchors.read(other)
    broken = tmp_path / "broken.h5"
    shutil.copy(tiny_anchor_file, broken)
    with h5py.File(broken, "a") as f:
        rows = f["image_features"]["0"]
        rows[0] = rows[0] * 3  # a row that is no longer unit length
    with pytest.raises(anchors.AnchorFileError, match="'sad' are not L2-normalized"):
        anchors.read(broken)


def test_local_checkpoint_file_is_loaded(image_set, tiny_anchor_file, tmp_path):
    torch.manual_seed(123)
    state = open_clip.create_model("ViT-S-32-alt", pretrained=None).state_dict()
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(state, ckpt)
    clip = {**TINY, "pretrained": str(ckpt)}
    out = tmp_path / f"{anchors.clip_name(clip)}.h5"
    assert out.name == "ViT-S-32-alt_tiny-clip.h5"
    anchors.encode_image_set(image_set, ["hap"], clip, out, device="cpu")
    a = anchors.read(out)
    assert a.pretrained == str(ckpt) and "sha256" in a.source
    paths = [image_set / p for p in a.image_paths["happy"]]
    np.testing.assert_allclose(a.image_features["happy"], direct_embeddings("ViT-S-32-alt", state, paths), atol=1e-5)
    # ... and they differ from the seed-0 random init, so the file's weights were really used.
    assert not np.allclose(a.image_features["happy"], anchors.read(tiny_anchor_file).image_features["happy"], atol=1e-3)


def test_official_vit_b_32_architecture(image_set, tmp_path):
    clip = {"model": "ViT-B-32", "pretrained": None}
    out = tmp_path / "ViT-B-32.h5"
    anchors.encode_image_set(image_set, ["joy", "sadness"], clip, out, device="cpu")  # 6 images
    a = anchors.read(out, expect_clip_model="ViT-B/32")
    assert a.dim == 512 and a.centers.shape == (2, 512) and a.counts() == {"happy": 3, "sad": 3}
    np.testing.assert_allclose(np.linalg.norm(a.image_features["sad"], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a.centers[1], a.image_features["sad"].mean(axis=0), atol=1e-6)


# ----------------------------------------------------------------------------------------- official format

def unit_rows(rng: np.random.Generator, n: int, k: int) -> torch.Tensor:
    x = rng.standard_normal((n, k)).astype(np.float32)
    return torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))


def official_file(path: Path, names: list[str], k: int = 512, seed: int = 0, extra=None) -> dict:
    rng = np.random.default_rng(seed)
    img = {name: {"feature": unit_rows(rng, 3 + i, k)} for i, name in enumerate(names)}
    data = {"anchor_center": torch.stack([img[n]["feature"].mean(0) for n in names]), "anchor_img_dict": img}
    if extra:
        data.update(extra)
    torch.save(data, path)
    return data


def test_official_import_export_round_trip(tmp_path):
    names = ["happy", "sad", "neutral", "anger", "excited", "frustration"]  # the official IEMOCAP strings
    original = official_file(tmp_path / "35_anchor.pt", names)
    a = anchors.import_official(tmp_path / "35_anchor.pt", tmp_path / "iemocap" / "ViT-B-32.h5", IEMOCAP_CLASSES,
                                "ViT-B-32")
    back = anchors.read(tmp_path / "iemocap" / "ViT-B-32.h5", expect_clip_model="ViT-B-32")
    assert back.class_names == names and back.dataset_labels == list(IEMOCAP_CLASSES)
    assert back.pretrained == "openai" and back.source.startswith("official:35_anchor.pt sha256:")
    assert back.clip_name == "ViT-B-32_openai"  # the pipeline's name for the CLIP recorded (it was "ViT-B-32")
    assert back.image_paths["happy"] == [] and back.counts() == a.counts()
    centers, feats = back.for_classes(IEMOCAP_CLASSES)
    np.testing.assert_array_equal(centers, original["anchor_center"].numpy())
    np.testing.assert_array_equal(feats[3], original["anchor_img_dict"]["anger"]["feature"].numpy())
    anchors.export_official(tmp_path / "iemocap" / "ViT-B-32.h5", tmp_path / "exported.pt")
    exported = torch.load(tmp_path / "exported.pt", weights_only=True)
    assert set(exported) == {"anchor_center", "anchor_img_dict"} and list(exported["anchor_img_dict"]) == names
    assert torch.equal(exported["anchor_center"], original["anchor_center"])
    for name in names:
        assert list(exported["anchor_img_dict"][name]) == ["feature"]
        assert torch.equal(exported["anchor_img_dict"][name]["feature"], original["anchor_img_dict"][name]["feature"])


def test_an_export_for_a_datasets_classes_has_its_rows_in_label_id_order(tmp_path):
    """A set shared by IEMOCAP and MELD experiments holds the union of their classes; the export wrote all of it,
    so MELD's label 0 (neutral) read IEMOCAP's happy row in the official code."""
    names = ["happy", "sad", "neutral", "anger", "excited", "frustration", "surprise", "fear", "disgust"]
    original = official_file(tmp_path / "union.pt", names)
    shared = anchors.import_official(tmp_path / "union.pt", tmp_path / "shared" / "ViT-B-32.h5", names, "ViT-B-32")
    meld = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]  # MELD's label ids
    anchors.export_official(shared, tmp_path / "meld.pt", classes=meld)
    exported = torch.load(tmp_path / "meld.pt", weights_only=True)
    order = ["neutral", "surprise", "fear", "sad", "happy", "disgust", "anger"]
    assert list(exported["anchor_img_dict"]) == order
    rows = [names.index(name) for name in order]
    assert torch.equal(exported["anchor_center"], original["anchor_center"][rows])
    for name in order:
        assert torch.equal(exported["anchor_img_dict"][name]["feature"], original["anchor_img_dict"][name]["feature"])
    with pytest.raises(anchors.AnchorFileError, match=r"name one emotion twice"):
        anchors.export_official(shared, tmp_path / "twice.pt", classes=["joy", "happy", "sad"])


def test_the_export_rows_follow_the_pickles_label_ids():
    """The exported pickle numbers labels by IEMOCAP's or MELD's official list; a dataset with fewer classes or
    another order (IEMOCAP-4 [neu, hap, sad, ang]) got its anchor rows in its own order, so label 0 (hap) read the
    neutral row."""
    from ercpipe.labels import CLASSES_BY_FORMAT, vega_label_order

    assert vega_label_order(["neu", "hap", "sad", "ang"]) == ["hap", "sad", "neu", "ang"]
    assert vega_label_order(["neutral", "joy", "sadness", "anger"]) == list(CLASSES_BY_FORMAT["meld"])
    for classes in CLASSES_BY_FORMAT.values():
        assert vega_label_order(classes) == list(classes)
    assert vega_label_order(["calm", "angry"]) == ["calm", "angry"]  # neither: the export check refuses it


def test_encoded_anchors_survive_official_round_trip(tiny_anchor_file, tmp_path):
    a = anchors.read(tiny_anchor_file)
    anchors.export_official(a, tmp_path / "tiny.pt")
    b = anchors.import_official(tmp_path / "tiny.pt", tmp_path / "tiny.h5", ["sadness", "joy", "anger"], "ViT-S-32-alt",
                                pretrained=None)
    np.testing.assert_array_equal(b.centers, a.centers)
    for name in a.class_names:
        np.testing.assert_array_equal(b.image_features[name], a.image_features[name])
    # The CLIP's weights are recorded as given (they were always "openai", a tag this model does not have).
    assert (b.pretrained, b.clip_name) == (a.pretrained, a.clip_name) == (None, "ViT-S-32-alt")


def test_official_import_errors(tmp_path):
    meld = ["neutral", "surprise", "fear", "sad", "happy", "disgust", "anger"]
    official_file(tmp_path / "meld.pt", meld, k=512)
    with pytest.raises(anchors.AnchorFileError, match="row 0 is the mean of class 'neutral'.*not of 'surprise'"):
        anchors.import_official(tmp_path / "meld.pt", tmp_path / "o.h5", ["surprise", "neutral", *MELD_CLASSES[2:]],
                                "ViT-B-32")
    with pytest.raises(anchors.AnchorFileError, match="512-d anchors, but CLIP ViT-L-14-336 embeds in 768"):
        anchors.import_official(tmp_path / "meld.pt", tmp_path / "o.h5", MELD_CLASSES, "ViT-L-14-336")
    with pytest.raises(anchors.AnchorFileError, match="7 rows but 6 classes"):
        anchors.import_official(tmp_path / "meld.pt", tmp_path / "o.h5", IEMOCAP_CLASSES, "ViT-B-32")
    assert not (tmp_path / "o.h5").exists()
    # A file that needs full unpickling (here: an argparse.Namespace, as training checkpoints often hold).
    official_file(tmp_path / "pickled.pt", ["happy", "sad"], k=8, extra={"args": argparse.Namespace(lr=1e-4)})
    with pytest.raises(anchors.AnchorFileError, match="needs full unpickling.*allow_pickle=True"):
        anchors.import_official(tmp_path / "pickled.pt", tmp_path / "p.h5", ["hap", "sad"], "custom-8d")
    loaded = anchors.import_official(tmp_path / "pickled.pt", tmp_path / "p.h5", ["hap", "sad"], "custom-8d",
                                     allow_pickle=True)
    assert loaded.dim == 8 and anchors.read(tmp_path / "p.h5").class_names == ["happy", "sad"]
    # A damaged file: NaN in an image feature, all-zero rows. The input file and the row are named.
    damaged = official_file(tmp_path / "nan.pt", ["happy", "sad"], k=8)
    damaged["anchor_img_dict"]["sad"]["feature"][1, 0] = float("nan")
    torch.save(damaged, tmp_path / "nan.pt")
    with pytest.raises(anchors.AnchorFileError, match=r"nan.pt: anchor_img_dict\['sad'\]\['feature'\]: row 1 holds "
                                                      r"non-finite values"):
        anchors.import_official(tmp_path / "nan.pt", tmp_path / "n.h5", ["hap", "sad"], "custom-8d")
    damaged["anchor_img_dict"]["sad"]["feature"][1] = 0.0
    torch.save(damaged, tmp_path / "nan.pt")
    with pytest.raises(anchors.AnchorFileError, match=r"nan.pt: anchor_img_dict\['sad'\]\['feature'\] row 1 is "
                                                      r"all zeros"):
        anchors.import_official(tmp_path / "nan.pt", tmp_path / "n.h5", ["hap", "sad"], "custom-8d")
    assert not (tmp_path / "n.h5").exists()


def test_official_import_tolerates_extra_keys_and_unnormalized_rows(tmp_path, caplog):
    rng = np.random.default_rng(1)
    feats = {"happy": unit_rows(rng, 2, 16) * 2.0, "sad": unit_rows(rng, 2, 16)}
    data = {"anchor_center": torch.stack([feats["happy"].mean(0) / 2, feats["sad"].mean(0)]),
            "anchor_img_dict": {"happy": {"feature": feats["happy"], "path": ["a.png", "b.png"]},
                                "sad": {"feature": feats["sad"]}}}
    torch.save(data, tmp_path / "odd.pt")
    caplog.set_level(logging.INFO, logger="ercpipe.anchors")
    a = anchors.import_official(tmp_path / "odd.pt", tmp_path / "odd.h5", ["hap", "sad"], "tiny-16d")
    np.testing.assert_allclose(np.linalg.norm(a.image_features["happy"], axis=1), 1.0, atol=1e-6)
    assert "ignoring extra key(s) ['path']" in caplog.text and "renormalizing" in caplog.text


# ----------------------------------------------------------------------------------------- mining

def mining_corpus(root: Path, video_path: str = "clip.mp4", times=None) -> tuple[Path, Path, pd.DataFrame, np.ndarray]:
    """Two classes; each class's valid/test utterances sit exactly on the class direction (closer than any
    training utterance), one absent training row would be nearest of all, and train rows are spread."""
    rng = np.random.default_rng(0)
    dims = 8
    directions = {"hap": np.eye(dims)[0], "sad": np.eye(dims)[1]}
    rows, feats, present = [], [], []
    for split, n in (("train", 6), ("valid", 2), ("test", 2)):
        for label, direction in directions.items():
            dialogue = f"{split}_{label}"
            for i in range(n):
                noise = 0.0 if split != "train" else 0.2 + 0.1 * i
                vec = direction + noise * rng.standard_normal(dims)
                absent = split == "train" and i == 0
                if absent:
                    vec = np.zeros(dims)
                start, end = times[i % len(times)] if times else (float(i), float(i) + 1.0)
                rows.append({"dataset": "demo", "split": split, "dialogue_id": dialogue, "utterance_index": i,
                             "utterance_id": f"{dialogue}_{i}", "speaker": "A", "speaker_slot": 0, "label": label,
                             "text": "hi", "audio_path": "", "audio_start": np.nan, "audio_end": np.nan,
                             "video_path": video_path, "video_start": start, "video_end": end, "flags": ""})
                feats.append(vec)
                present.append(not absent)
    manifest = pd.DataFrame(rows)
    manifest_io.write(manifest, root / "manifest.tsv")
    feats = np.asarray(feats, dtype=np.float32)
    feature_io.write(root / "visual.h5", feature_io.FeatureSet(
        manifest["utterance_id"].tolist(), feats, np.asarray(present),
        {"modality": "visual", "extractor": "test", "model": "none", "settings": {}}))
    return root / "manifest.tsv", root / "visual.h5", manifest, feats


def fake_crops(video_path, start, end, speaker, settings, face_selection):
    """Three crops per utterance; the middle one is marked with the utterance's start time."""
    if start == 3.0:
        return []  # no face found in this utterance
    if start == 4.0:
        raise MediaError("corrupt_video", video_path, "test")
    marker = np.full((32, 32, 3), int(start * 10) + 50, np.uint8)
    return [np.zeros((32, 32, 3), np.uint8), marker, np.full((32, 32, 3), 255, np.uint8)]


def test_mining_uses_only_training_utterances(tmp_path):
    manifest_path, visual_path, manifest, feats = mining_corpus(tmp_path)
    out = tmp_path / "mined"
    anchors.mine_anchor_images(manifest_path, visual_path, ["hap", "sad"], {"per_class": 3, "min_per_class": 2},
                               out, {}, {"mode": "largest_central"}, crop_fn=fake_crops)
    mined = pd.read_csv(out / "mined.tsv", sep="\t", keep_default_na=False)
    assert set(mined["split"]) == {"train"}  # valid/test are nearer the class means but never chosen
    assert not mined["utterance_id"].str.contains("valid|test").any()
    assert "train_hap_0" not in set(mined["utterance_id"])  # absent feature, never a candidate
    for label, name in (("hap", "happy"), ("sad", "sad")):
        rows = mined[mined["class"] == name]
        assert rows["distance"].is_monotonic_increasing
        # Expected ranking, computed independently: cosine to the mean of the present training features.
        train = manifest[(manifest["split"] == "train") & (manifest["label"] == label)].index[1:]
        mean = feats[train].mean(axis=0)
        cos = feats[train] @ mean / (np.linalg.norm(feats[train], axis=1) * np.linalg.norm(mean))
        expected = manifest.loc[train[np.argsort(-cos, kind="stable")], "utterance_id"].tolist()
        assert rows["utterance_id"].tolist() == expected[:len(rows)]
        ok = rows[rows["status"] == "ok"]
        assert len(ok) == 3 and ok["image"].tolist() == [f"{name}/{u}.png" for u in ok["utterance_id"]]
        for image, uid in zip(ok["image"], ok["utterance_id"]):
            start = manifest.set_index("utterance_id").loc[uid, "video_start"]
            pixels = np.asarray(Image.open(out / image))
            assert (pixels == int(start * 10) + 50).all()  # the middle crop
        skipped = rows[rows["status"] != "ok"].set_index("utterance_id")
        if f"train_{label}_3" in skipped.index:  # fake_crops finds no face there
            assert skipped.loc[f"train_{label}_3", "status"] == "no_face"
        if f"train_{label}_4" in skipped.index:  # ... and cannot decode this one
            assert skipped.loc[f"train_{label}_4", "status"].startswith("media_error: ")
        assert set(skipped.index) <= {f"train_{label}_3", f"train_{label}_4"} and (skipped["image"] == "").all()
    assert sorted(p.name for p in (out / "happy").iterdir()) == sorted(
        Path(i).name for i in mined.loc[(mined["class"] == "happy") & (mined["status"] == "ok"), "image"])
    # The mined folder is itself an anchor image set (mined.tsv is ignored as a non-image file).
    scanned = anchors.scan_image_set(out, ["hap", "sad"])
    assert [len(v) for v in scanned.values()] == [3, 3]
    # It is encoded as mined: an edit inside it was read by the next encoding (another CLIP model) only, so the
    # set's anchor files held different images. A copy that loses the files' times is still the same set.
    check_mined_unchanged(out, ["hap", "sad"])
    shutil.copytree(out, tmp_path / "copied", copy_function=shutil.copy)
    check_mined_unchanged(tmp_path / "copied", ["hap", "sad"])
    (out / mined.loc[mined["status"] == "ok", "image"].iloc[0]).unlink()
    with pytest.raises(anchors.AnchorImageError, match=r"mined was changed after it was mined \(an image added, "
                                                       r"removed or edited\).* give the copy as an `images:` set"):
        anchors.encode_image_set(out, ["hap", "sad"], {"model": "ViT-B-32", "pretrained": None}, tmp_path / "a.h5")


def test_mining_needs_enough_training_utterances(tmp_path):
    manifest_path, visual_path, _, _ = mining_corpus(tmp_path)
    with pytest.raises(anchors.AnchorMiningError, match=r"class 'hap' has 5 training utterance.* fewer than "
                                                       r"min_per_class = 6 \(of 6; the others: 1 absent\); lower"):
        anchors.mine_anchor_images(manifest_path, visual_path, ["hap", "sad"], {"per_class": 6, "min_per_class": 6},
                                   tmp_path / "mined", {}, None, crop_fn=fake_crops)
    with pytest.raises(anchors.AnchorMiningError, match="class 'sad': only 3 of 5"):
        anchors.mine_anchor_images(manifest_path, visual_path, ["sad"], {"per_class": 5, "min_per_class": 4},
                                   tmp_path / "mined", {}, None, crop_fn=fake_crops)
    assert not (tmp_path / "mined").exists()
    with pytest.raises(ValueError, match="unknown anchor mining setting"):
        anchors.mining_settings({"k": 3})
    # per_class alone below the default min_per_class: the minimum follows it (it failed in the job)
    assert anchors.mining_settings({"per_class": 3}) == {"per_class": 3, "min_per_class": 3}
    assert anchors.mining_settings({}) == {"per_class": 35, "min_per_class": 5}
    with pytest.raises(ValueError, match=r"min_per_class \(4\) exceeds per_class \(3\); lower min_per_class"):
        anchors.mining_settings({"per_class": 3, "min_per_class": 4})
    # The job's params: a default written out is no change (it re-mined, re-encoded and re-trained).
    entry = {"dataset": "d", "visual": "densenet121"}
    for written in ({}, {"per_class": 35}, {"min_per_class": 5}, {"per_class": 35, "min_per_class": 5}):
        assert mining_params({**entry, **written}) == entry, written
    assert mining_params({**entry, "per_class": 3, "min_per_class": 3}) == {**entry, "per_class": 3}
    assert mining_params({**entry, "per_class": 3, "min_per_class": 2}) == {**entry, "per_class": 3, "min_per_class": 2}


def test_a_class_without_any_face_names_why_and_no_impossible_setting(tmp_path):
    """min_per_class cannot go below 1: with no candidate at all, the advice was to lower it."""
    manifest_path, visual_path, manifest, feats = mining_corpus(tmp_path)
    happy = manifest["label"] == "hap"
    feature_io.write(visual_path, feature_io.FeatureSet(
        manifest["utterance_id"].tolist(), feats, ~happy.to_numpy(),
        {"modality": "visual", "extractor": "test", "model": "none", "settings": {},
         "absent": json.dumps({u: "no_face: no face in 4 frames" for u in manifest.loc[happy, "utterance_id"]})}))
    with pytest.raises(anchors.AnchorMiningError, match=r"class 'hap' has 0 training utterance.*\(of 6; the others: "
                                                       r"6 no_face\); use a hand-made anchor image set"):
        anchors.mine_anchor_images(manifest_path, visual_path, ["hap", "sad"], {"per_class": 3, "min_per_class": 1},
                                   tmp_path / "mined", {}, None, crop_fn=fake_crops)


def draw_video(path: Path, seconds: int = 4, fps: int = 4) -> None:
    """A 640x360 mp4v video with one drawn face MTCNN detects (skin ellipse, eyes with pupils, brows, mouth)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 360))
    for i in range(seconds * fps):
        img = np.full((360, 640, 3), (110, 90, 70), np.uint8)  # BGR
        cx, cy, h = 320 + i % 3, 180, 170
        w = int(h * 0.75)
        cv2.ellipse(img, (cx, cy), (w // 2, h // 2), 0, 0, 360, (140, 175, 225), -1)
        for sx in (-1, 1):
            eye = (cx + sx * int(w * 0.2), cy - int(h * 0.12))
            cv2.ellipse(img, eye, (16, 10), 0, 0, 360, (255, 255, 255), -1)
            cv2.circle(img, eye, 6, (10, 20, 30), -1)
            cv2.line(img, (eye[0] - 16, eye[1] - 20), (eye[0] + 16, eye[1] - 20), (20, 40, 60), 4)
        cv2.line(img, (cx, cy - 10), (cx - 8, cy + 17), (80, 100, 150), 3)
        cv2.ellipse(img, (cx, cy + h // 4), (int(w * 0.22), 10), 0, 0, 180, (40, 30, 120), 5)
        writer.write(img)
    writer.release()


def test_mining_with_real_face_crops(tmp_path):
    draw_video(tmp_path / "clip.mp4")
    times = [(0.0, 1.0), (1.0, 2.0)]
    manifest_path, visual_path, _, _ = mining_corpus(tmp_path, str(tmp_path / "clip.mp4"), times=times)
    out = tmp_path / "mined"
    anchors.mine_anchor_images(manifest_path, visual_path, ["hap"], {"per_class": 2, "min_per_class": 2}, out,
                               {"fps": 2.0, "max_frames": 2, "image_size": 64}, {"mode": "largest_central"})
    mined = pd.read_csv(out / "mined.tsv", sep="\t", keep_default_na=False)
    assert mined["status"].tolist() == ["ok", "ok"] and set(mined["split"]) == {"train"}
    for image in mined["image"]:
        crop = np.asarray(Image.open(out / image))
        assert crop.shape == (64, 64, 3) and crop.std() > 10  # a face, not a flat background


def test_quick_gelu_setting_reaches_the_model():
    def uses_quick_gelu(clip: dict) -> bool:
        model, _, _ = clip_mod.load_clip(clip, torch.device("cpu"))
        return any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())

    assert not uses_quick_gelu(TINY)
    assert uses_quick_gelu({**TINY, "quick_gelu": True})


def test_the_image_set_digest_counts_only_the_images_the_encoder_reads(tmp_path):
    """The digest is what re-encodes a user's image set (common.smk, anchor_images_digest): a .DS_Store, a
    macOS ._ file or a notes.txt beside the images used to re-encode it and re-train every VEGA experiment."""
    import os

    from ercpipe.anchors.images import image_set_digest
    from ercpipe.io.digest import folder_digest

    happy = tmp_path / "set" / "happy"
    happy.mkdir(parents=True)
    (happy / "a.png").write_bytes(b"png")

    def digest():
        return image_set_digest(tmp_path / "set", ["hap", "sad"])

    before = digest()
    # The digest of earlier versions for a folder that holds only the classes' images: no set re-encodes on upgrade.
    assert before == folder_digest(tmp_path / "set")
    (happy / ".DS_Store").write_bytes(b"junk")
    (happy / "._a.png").write_bytes(b"apple double")
    (happy / "notes.txt").write_text("where the photos came from")
    (tmp_path / "set" / ".thumbs").mkdir()
    (tmp_path / "set" / ".thumbs" / "b.png").write_bytes(b"thumb")
    # Nor images of a class the dataset does not have, or beside the class folders (the encoder reads neither).
    (tmp_path / "set" / "neutral").mkdir()
    (tmp_path / "set" / "neutral" / "n.png").write_bytes(b"png")
    (tmp_path / "set" / "cover.png").write_bytes(b"png")
    assert digest() == before
    (happy / "b.JPG").write_bytes(b"jpg")  # a new image
    assert digest() != before
    added = digest()
    os.utime(happy / "a.png", ns=(1, 1))  # a replaced image (another mtime)
    assert digest() != added
