"""What kind of file a path holds, from its first bytes: for messages when a user passes one file for another
(a feature pickle where an HDF5 feature file is expected, a 35_anchor.pt where an anchor file is ...)."""
from __future__ import annotations

from pathlib import Path

# What an image set's class folder is read for (ercpipe.anchors.images); anything else there is ignored.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})


def file_kind(path: str | Path) -> str:
    """'an HDF5 file', 'a zip archive (torch.save writes these)', 'a gzip-compressed file', 'a pickle', 'an empty
    file', 'a text file' or 'a binary file' (unrecognised); 'a folder' for a directory."""
    path = Path(path)
    if path.is_dir():
        return "a folder"
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        return "an empty file"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save writes these)"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file"
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:  # pickle protocols 2-5 open with PROTO
        return "a pickle"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a character cut at the end of the sample
            return "a binary file"
    return "a text file"
