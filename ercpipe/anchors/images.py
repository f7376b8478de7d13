"""Anchor image sets (anchors/{set}/{class}/*.png ...) and their CLIP encoding.

A class is assigned by the image's IMMEDIATE parent folder name, mapped through canonical_emotion, so a
folder "joy" serves MELD's "joy" and IEMOCAP's "hap" alike. The official code instead assigned each image
to the first class name found anywhere in its path (a root containing "sad" mis-assigns everything; spec O16).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ercpipe.errors import ErcpipeError
from ercpipe.anchors.clip import clip_name, clip_settings, load_clip
from ercpipe.anchors.store import AnchorSet, write
from ercpipe.io.features import package_versions, settings_hash
from ercpipe.io.filekind import IMAGE_EXTENSIONS
from ercpipe.io.digest import file_digest, file_entry
from ercpipe.labels import canonical_emotion, emotion_aliases

logger = logging.getLogger(__name__)

PAPER_IMAGES_PER_CLASS = 35  # the paper's image sets (the official cache is named "35_anchor.pt")
VERSION_PACKAGES = ("open_clip_torch", "torch", "torchvision", "pillow", "h5py", "numpy", "ercpipe")


class AnchorImageError(ErcpipeError, ValueError):
    """The anchor image set cannot be used; the message names the folder or file and what to do."""


def _canonical_classes(class_names: Sequence[str]) -> dict[str, str]:
    """canonical name -> the dataset's own label, in label order; two labels meaning one emotion is an error."""
    out: dict[str, str] = {}
    for label in class_names:
        name = canonical_emotion(label)
        if name in out:
            raise AnchorImageError(f"dataset classes {out[name]!r} and {label!r} both mean {name!r}; "
                                   "anchor classes must be distinct emotions")
        out[name] = str(label)
    if not out:
        raise AnchorImageError("no classes requested for the anchor image set: no experiment, export or mining uses "
                               "it; use it in one (anchors: NAME), or give the set its `classes`")
    return out


def _as_rgb(image):
    """8-bit RGB, upright, as CLIP's preprocessing expects (alpha dropped, as the official code does). Pillow's own
    convert("RGB") clips 16-bit and 32-bit integer pixels at 255 (a 16-bit photograph comes out white), so
    those are scaled from their range first; float pixels have no agreed range and are refused by the scan."""
    from PIL import Image, ImageOps

    # Upright as every viewer shows it: a phone photo is stored sideways with an EXIF Orientation tag.
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # "I;16", "I;16B", ... (16-bit) or "I" (32-bit; 16-bit PNGs open so)
        pixels = np.asarray(image).astype(np.float64)
        scale = 257.0 if image.mode.startswith("I;16") or pixels.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(np.rint(pixels / scale), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def _utf8_name(path: Path) -> bool:
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as surrogates
        return False
    return True


def _exif_turned(path: Path) -> bool:
    """Whether the image's EXIF Orientation turns or mirrors it (2..8; 1 and anything else leave it as stored)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.getexif().get(0x0112, 1) in range(2, 9)  # 0x0112: Orientation
    except Exception:  # noqa: BLE001 - an unreadable file is the scan's to report
        return False


def image_set_digest(images_dir: str | Path, class_names: Sequence[str], length: int = 16,
                     content: bool = False) -> str:
    """What encoding the set reads, cheaply (no image decoded): the path, size and mtime of every image file in
    the folders of the requested classes (as scan_image_set finds them; the same digest as
    ercpipe.io.digest.folder_digest of a folder holding only those), plus the names of the images whose
    EXIF orientation turns them (encoded upright since this was fixed: only a set holding some changes). Folders
    of other classes, hidden folders and files, and files beside the class folders count for nothing. "" for a
    missing folder. content: each file's bytes instead of its size and mtime (a copy that loses the times keeps
    the digest)."""
    import hashlib

    root = Path(images_dir)
    if not root.is_dir():
        return ""
    wanted = {canonical_emotion(c) for c in class_names}
    digest, turned = hashlib.sha256(), []
    folders = sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith(".")
                     and canonical_emotion(e.name) in wanted)
    for folder in folders:
        names = sorted(e.name for e in (root / folder).iterdir() if not e.is_dir() and not e.name.startswith(".")
                       and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS)
        for name in names:
            file = root / folder / name
            digest.update(f"{folder}/{name}\0{file_digest(file, 64)}\n".encode("utf-8", "surrogateescape")
                          if content else file_entry(root, file))
            if file.is_file() and _exif_turned(file):
                turned.append(f"{folder}/{name}")
    out = digest.hexdigest()[:length]
    return f"{out} upright:{','.join(turned)}" if turned else out


def _unreadable_reason(path: Path) -> str:
    """'' if PIL decodes the whole image into pixels that _as_rgb can use, else why not (a truncated file only
    fails when fully loaded)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "F":
                return "floating-point pixels, which have no agreed range: save it as an 8-bit image"
            pixels = np.asarray(image) if image.mode == "I" else None
            if pixels is not None and pixels.size and not 0 <= pixels.min() <= pixels.max() <= 65535:
                return "32-bit pixel values outside 0..65535: save it as an 8-bit or 16-bit image"
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return f"{type(err).__name__}: {err}"
    return ""


# Files an operating system leaves in folders it shows (Windows' thumbnail cache and folder settings): noted as
# hidden files are, not warned of as images in a format that is not read.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})

def scan_image_set(images_dir: str | Path, class_names: Sequence[str]) -> dict[str, list[Path]]:
    """Images per canonical class (dataset label order), each sorted by name; every image checked with PIL.

    Raises AnchorImageError listing every missing class folder, empty class and unreadable image.
    Files that are not images, hidden files, sub-folders of class folders and folders of classes not
    requested are ignored and logged.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise AnchorImageError(f"anchor image set {images_dir} is not a folder; create {images_dir}/<class>/ "
                               "folders of images (e.g. happy/, sad/; see docs/anchors.md)")
    wanted = _canonical_classes(class_names)
    folders: dict[str, Path] = {}
    ignored: list[str] = []
    doubled: list[str] = []
    for entry in sorted(images_dir.iterdir()):
        name = canonical_emotion(entry.name)
        if not entry.is_dir() or entry.name.startswith(".") or name not in wanted:
            ignored.append(entry.name + ("/" if entry.is_dir() else ""))
            continue
        if name in folders:  # said with the set's other problems (the first folder is checked meanwhile)
            doubled.append(f"folders {folders[name].name!r} and {entry.name!r} both hold class {name!r}: merge them "
                           "into one folder")
            continue
        folders[name] = entry
    problems: list[str] = doubled
    # Folders that name no requested class: a misnamed class folder ("Sad_faces") is among them.
    unmatched = [e.name for e in sorted(images_dir.iterdir()) if e.is_dir() and not e.name.startswith(".")
                 and canonical_emotion(e.name) not in wanted]
    for name, label in wanted.items():
        if name not in folders:
            broken = [e.name for e in images_dir.iterdir() if e.is_symlink() and not e.exists()
                      and canonical_emotion(e.name) == name]
            problems.append(f"no folder for class {label!r}: create {images_dir}/{name}/ (accepted folder names: "
                            f"{', '.join(emotion_aliases(name))})"
                            + (f"; {images_dir}/{broken[0]} is a broken link" if broken else "")
                            + (f"; folders there that name no class of the dataset: {', '.join(unmatched[:10])}"
                               if unmatched and not broken else ""))
    images: dict[str, list[Path]] = {}
    nested: list[str] = []
    for name, folder in folders.items():
        files, subfolders, other_files = [], [], []
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or entry.name.lower() in SYSTEM_FILES:
                ignored.append(f"{folder.name}/{entry.name}")
            elif entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS:
                if not _utf8_name(entry):
                    problems.append(f"image {os.fsencode(entry).decode('utf-8', 'backslashreplace')} has a name that "
                                    "is not UTF-8 (from an archive made on another system), which the anchor file "
                                    "cannot record: rename it")
                    continue
                files.append(entry)
            elif entry.is_symlink() and not entry.exists():
                problems.append(f"broken link {entry} (it points to {os.readlink(entry)}, which does not exist): "
                                "fix or delete it")
            elif entry.is_dir():
                subfolders.append(f"{folder.name}/{entry.name}/")
            else:
                ignored.append(f"{folder.name}/{entry.name}")
                other_files.append(entry.name)
        nested += subfolders
        if not files:
            fix = (f"its sub-folders {subfolders} are not read: move their images up" if subfolders
                   else f"it holds {len(other_files)} file(s) of other formats ({', '.join(other_files[:5])}"
                        f"{' ...' if len(other_files) > 5 else ''}): convert them to one of those formats"
                   if other_files else "add images to it")
            problems.append(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); {fix}")
        for path in tqdm(files, desc=f"check {folder.name}", unit="img", leave=False, disable=len(files) < 50):
            reason = _unreadable_reason(path)
            if reason:
                problems.append(f"unreadable image {path} ({reason}): replace or delete it")
        images[name] = files
    if problems:
        raise AnchorImageError(f"anchor image set {images_dir} cannot be used:\n  " + "\n  ".join(problems))
    if nested:
        logger.warning("%s: only the images directly in a class folder are used; not read: %s", images_dir,
                       ", ".join(nested[:20]) + (" ..." if len(nested) > 20 else ""))
    # A file in a class folder that is not an image file is a warning (an image saved as .jfif or .heic would
    # otherwise be dropped unnoticed); hidden files and what is beside the class folders are only noted.
    in_classes = [e for e in ignored if "/" in e.rstrip("/") and not Path(e).name.startswith(".")
                  and Path(e).name.lower() not in SYSTEM_FILES]
    noted = [e for e in ignored if e not in in_classes]
    if noted:
        logger.info("%s: ignored %d entries that are not images of requested classes: %s", images_dir, len(noted),
                    ", ".join(noted[:20]) + (" ..." if len(noted) > 20 else ""))
    if in_classes:
        logger.warning("%s: ignored %d file(s) in class folders that are not image files (%s): %s; convert an image "
                       "among them to one of those formats to use it", images_dir, len(in_classes),
                       " ".join(sorted(IMAGE_EXTENSIONS)),
                       ", ".join(in_classes[:20]) + (" ..." if len(in_classes) > 20 else ""))
    ordered = {name: images[name] for name in wanted}
    counts = {name: len(files) for name, files in ordered.items()}
    logger.info("%s: images per class %s (the paper used %d per class)", images_dir, counts, PAPER_IMAGES_PER_CLASS)
    if len(set(counts.values())) > 1:
        logger.warning("%s: classes have different numbers of images %s; center anchors of small classes are "
                       "noisier (the paper used %d per class)", images_dir, counts, PAPER_IMAGES_PER_CLASS)
    return ordered


def encode_images(paths: Sequence[Path], model, preprocess, device, batch_size: int = 32) -> np.ndarray:
    """L2-normalized CLIP image embeddings float32 [n, k], in the order of `paths`."""
    import torch
    from PIL import Image

    parts = []
    with torch.no_grad():
        for start in tqdm(range(0, len(paths), batch_size), desc="CLIP images", unit="batch"):
            batch = []
            for path in paths[start:start + batch_size]:
                with Image.open(path) as image:
                    batch.append(preprocess(_as_rgb(image)))
            emb = model.encode_image(torch.stack(batch).to(device)).float()
            parts.append((emb / emb.norm(dim=-1, keepdim=True)).cpu().numpy())
    return np.concatenate(parts).astype(np.float32, copy=False)


# Written by the mining job beside the images it mined: their image_set_digest, checked before they are encoded.
MINED_DIGEST = ".image_set_digest"


def check_mined_unchanged(images_dir: Path, class_names: Sequence[str]) -> None:
    """Refuse a mined folder whose images changed after mining: a later encoding (another CLIP model) read the edit
    and the first did not, so one "mined set" held different images in its anchor files."""
    recorded = images_dir / MINED_DIGEST
    if not recorded.is_file():  # not mined, or mined before the digest was written
        return
    if recorded.read_text().strip() != image_set_digest(images_dir, class_names, content=True):
        raise AnchorImageError(
            f"{images_dir} was changed after it was mined (an image added, removed or edited): its anchor "
            "files would not hold one set of images. To curate mined images, copy the folder and give the copy as an "
            "`images:` set; to undo the change, mine the set again (`--forcerun mine_anchor_images`)")


def encode_image_set(images_dir: str | Path, class_names: Sequence[str], clip: dict, out_path: str | Path,
                     device: str = "auto", batch_size: int = 32) -> None:
    """Encode an image set with CLIP and write anchors/{set}/{clip_name}.h5 (see ercpipe.anchors.store)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    settings = clip_settings(clip)
    images_dir = Path(images_dir)
    check_mined_unchanged(images_dir, class_names)
    images = scan_image_set(images_dir, class_names)
    from ercpipe.device import resolve_device  # torch; only needed when encoding

    torch_device = resolve_device(device)
    model, preprocess, weights = load_clip(settings, torch_device)
    flat = [path for files in images.values() for path in files]
    logger.info("encoding %d images of %d classes with CLIP %s on %s", len(flat), len(images), settings["model"],
                torch_device)
    feats = encode_images(flat, model, preprocess, torch_device, batch_size)
    per_class: dict[str, np.ndarray] = {}
    start = 0
    for name, files in images.items():
        per_class[name] = feats[start:start + len(files)]
        start += len(files)
    # Mean of the normalized rows, not renormalized, exactly as the official anchor builder (spec 3.2).
    centers = np.stack([per_class[name].mean(axis=0) for name in images]).astype(np.float32)
    anchors = AnchorSet(
        class_names=list(images), centers=centers, image_features=per_class,
        image_paths={name: [p.relative_to(images_dir).as_posix() for p in files] for name, files in images.items()},
        clip_model=settings["model"], pretrained=settings["pretrained"], dim=int(feats.shape[1]),
        clip_name=clip_name(settings), settings=settings, setting_hash=settings_hash(settings),
        source=f"images:{images_dir} weights:{weights}", versions=package_versions(VERSION_PACKAGES),
        dataset_labels=[str(c) for c in class_names])
    write(out_path, anchors)
