"""VEGA visual emotion anchors: CLIP-encoded image sets, the official `35_anchor.pt` format, anchor mining.

Reading anchors (`read`, `AnchorSet`) needs only h5py and numpy; open_clip and torch are imported when
encoding, importing or exporting. See docs/anchors.md.
"""
from ercpipe.anchors.clip import DEFAULT_CLIP, clip_name, clip_settings, resolve_quick_gelu
from ercpipe.anchors.images import IMAGE_EXTENSIONS, AnchorImageError, encode_image_set, scan_image_set
from ercpipe.anchors.mining import AnchorMiningError, mine_anchor_images
from ercpipe.anchors.store import AnchorFileError, AnchorSet, export_official, import_official, read, write
from ercpipe.mining_setting import DEFAULT_MINING, mining_settings

__all__ = [
    "DEFAULT_CLIP", "DEFAULT_MINING", "IMAGE_EXTENSIONS", "AnchorFileError", "AnchorImageError", "AnchorMiningError",
    "AnchorSet", "clip_name", "clip_settings", "encode_image_set", "export_official", "import_official",
    "mine_anchor_images", "mining_settings", "read", "resolve_quick_gelu", "scan_image_set", "write",
]
