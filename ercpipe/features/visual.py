"""Visual features: sampled frames -> MTCNN faces -> the speaker's face, aligned -> DenseNet -> mean.

Per utterance: frames are sampled at `fps` inside [video_start, video_end) (at most `max_frames`,
spread evenly over the utterance), MTCNN (facenet-pytorch; its weights ship inside the package)
finds faces and five landmarks in batches of frames (spanning utterances in extract_shard, as do the
backbone's batches of crops; see CrossBatcher), one face per frame is chosen as the speaker's
(see `select_face`), rotated so the eyes are level and cropped square with a margin, embedded by the
backbone, and the per-frame embeddings are averaged. An utterance with no usable video or no
speaker face in any frame becomes zeros with present=False; the reason is logged and stored as JSON
in the feature file's `absent` attribute.

Backbones: "densenet121" (torchvision, ImageNet layout, 1024-d global-average-pooled features of
224x224 RGB crops) and "denseface" (ercpipe.features.denseface, 342-d, 64x64 grayscale crops).
"""
from __future__ import annotations

import json
import logging
import math
import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
import torchvision
from tqdm.auto import tqdm

from ercpipe.features import denseface as denseface_mod
from ercpipe.device import device_description, resolve_device
from ercpipe.features import settings as settings_mod
from ercpipe.features.interface import NO_CONTEXT, ExtractionContext, under_base
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.io.digest import file_digest
from ercpipe.io.media import MediaError, count_sampled_frames, empty_window_problem, iter_frames, require_readable

logger = logging.getLogger(__name__)

# Defaults and settings resolution live in ercpipe.features.settings (light: training checks feature files
# with them without this module's libraries); these are their names here.
BACKBONES = settings_mod.VISUAL_BACKBONES  # backbone -> (feature dimension, default crop size in pixels)
DEFAULT_SETTINGS = settings_mod.VISUAL_DEFAULTS
visual_settings = settings_mod.visual_settings  # validated, defaults filled in, image_size resolved
face_selection_settings = settings_mod.face_selection_settings
face_selection_for = settings_mod.face_selection_for
stored_settings = settings_mod.stored_visual_settings  # what a feature file records (and hashes)

# On the CPU, MTCNN and backbone calls take at most this many frames / crops (the batch_size setting is the
# cap on CUDA): per item the CPU cost is flat from 1 to 8 and grows beyond (densenet121 at 32 crops: 1.7x per
# crop, and more memory), so larger CPU batches only cost (docs/features.md, "Batches across utterances").
CPU_MAX_BATCH = 8
# Faces whose areas are within this fraction of the largest count as equally large ("largest_central").
AREA_TIE_FRACTION = 0.05
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
TORCHVISION_DENSENET121_FILE = "densenet121-a639ec97.pth"  # name torchvision gives the ImageNet weights
RANDOM_SEED = 0  # random-init backbones are seeded so every shard computes the same function
VIDEO_FLAGS = ("missing_video", "corrupt_video", "no_video")
# torchvision's published ImageNet file uses old names ("norm.1.weight"); current modules say "norm1.weight".
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")


# ----------------------------------------------------------------------------------------- settings

def feature_dim(settings: dict | None) -> int:
    return BACKBONES[visual_settings(settings)["backbone"]][0]


# ----------------------------------------------------------------------------------------- faces

@dataclass
class Face:
    box: np.ndarray  # float32 [4]: x1, y1, x2, y2 in pixels
    prob: float
    landmarks: np.ndarray  # float32 [5, 2]: eye (image-left), eye (image-right), nose, mouth left, mouth right

    @property
    def center(self) -> tuple[float, float]:
        return float(self.box[0] + self.box[2]) / 2, float(self.box[1] + self.box[3]) / 2

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


def build_detector(settings: dict, device: str | torch.device = "auto"):
    """An MTCNN that returns every face (keep_all) so the selection rule can choose among them."""
    from facenet_pytorch import MTCNN  # heavy import, only when faces are needed

    settings = visual_settings(settings)
    return MTCNN(keep_all=True, select_largest=False, min_face_size=settings["min_face_size"],
                 thresholds=list(settings["thresholds"]), device=resolve_device(device) if isinstance(device, str)
                 else device)


def detect_max_side(settings: dict) -> int | None:
    """The validated `detect_max_side` setting: a positive integer, or None (detect at full resolution)."""
    return visual_settings(settings)["detect_max_side"]


def detection_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) of the copy MTCNN sees: the frame's own size when its longest side is at most
    `max_side` (or max_side is None), else scaled down to a longest side of `max_side`, aspect kept."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


class CrossBatcher:
    """Runs `fn` over the items of many owners (utterances) in batches that span owners.

    `add(owner, items)` queues an owner's items; a queue of items with the same `key(item)` (frames of one
    size batch together) runs as soon as it holds `batch_size` items, `flush()` runs every queue, and
    `done()` pops the owners all of whose items have run, in the order they were added, with their results
    in item order. `fn(items)` returns one result per item and must compute each item independently of
    the others in its batch (MTCNN and the backbones in eval mode do; only float rounding can differ with
    the batch's size, as kernels do), so the batching changes the speed, not the results. An owner
    without items is done at once.
    """

    def __init__(self, fn, batch_size: int, key=lambda item: None):
        self.fn, self.batch_size, self.key = fn, max(1, int(batch_size)), key
        self.queues: dict = {}  # key -> [(owner, position, item)]
        self.results: dict = {}  # owner -> results by position (None until run)
        self.missing: dict = {}  # owner -> items not yet run

    def add(self, owner, items: list) -> None:
        if owner in self.results:
            raise ValueError(f"owner {owner!r} was added twice")
        self.results[owner] = [None] * len(items)
        self.missing[owner] = len(items)
        for position, item in enumerate(items):
            key = self.key(item)
            queue = self.queues.setdefault(key, [])
            queue.append((owner, position, item))
            if len(queue) >= self.batch_size:
                self._run(key)

    @property
    def held(self) -> int:
        """Items queued and not yet run."""
        return sum(len(q) for q in self.queues.values())

    def flush(self) -> None:
        for key in list(self.queues):
            self._run(key)

    def done(self) -> list[tuple[object, list]]:
        finished = [owner for owner, n in self.missing.items() if n == 0]
        out = []
        for owner in finished:
            del self.missing[owner]
            out.append((owner, self.results.pop(owner)))
        return out

    def _run(self, key) -> None:
        queue = self.queues.pop(key)
        for start in range(0, len(queue), self.batch_size):
            chunk = queue[start:start + self.batch_size]
            results = self.fn([item for _, _, item in chunk])
            if len(results) != len(chunk):
                raise RuntimeError(f"batch function gave {len(results)} results for {len(chunk)} items")
            for (owner, position, _), result in zip(chunk, results):
                self.results[owner][position] = result
                self.missing[owner] -= 1


def _detect_same_size(detector, frames: list[np.ndarray], max_side: int | None) -> list[list[Face]]:
    """One MTCNN call on frames of one size (see detect_faces for max_side)."""
    height, width = frames[0].shape[:2]
    small_w, small_h = detection_size(width, height, max_side)
    sx, sy = width / small_w, height / small_h
    scaled = (small_w, small_h) != (width, height)
    if min(small_w, small_h) < getattr(detector, "min_face_size", 20):
        # MTCNN's image pyramid is empty for a picture smaller than its smallest face (facenet-pytorch then
        # fails in torch.cat): no face can be found in it.
        return [[] for _ in frames]
    batch = [cv2.resize(f, (small_w, small_h), interpolation=cv2.INTER_AREA) for f in frames] if scaled else frames
    boxes, probs, points = detector.detect(np.stack(batch), landmarks=True)
    out: list[list[Face]] = []
    for frame_boxes, frame_probs, frame_points in zip(boxes, probs, points):
        if frame_boxes is None:  # facenet-pytorch returns None (object arrays) for a frame without faces
            out.append([])
            continue
        b = np.asarray(frame_boxes, dtype=np.float32).reshape(-1, 4)
        p = np.asarray(frame_probs, dtype=np.float32).reshape(-1)
        lm = np.asarray(frame_points, dtype=np.float32).reshape(-1, 5, 2)
        if scaled:  # copy pixel x -> frame pixel (x + 0.5) * sx - 0.5 (and y with sy)
            b = b.copy()
            lm = lm.copy()
            b[:, [0, 2]] = (b[:, [0, 2]] + 0.5) * sx - 0.5
            b[:, [1, 3]] = (b[:, [1, 3]] + 0.5) * sy - 0.5
            lm[..., 0] = (lm[..., 0] + 0.5) * sx - 0.5
            lm[..., 1] = (lm[..., 1] + 0.5) * sy - 0.5
        out.append([Face(b[j], float(p[j]), lm[j]) for j in range(len(b))])
    return out


def face_batcher(detector, batch_size: int = 32, max_side: int | None = None) -> CrossBatcher:
    """A CrossBatcher of frames -> faces (detect_faces per frame): frames of the same size, from any number
    of utterances, share MTCNN calls of up to `batch_size` frames."""
    return CrossBatcher(lambda frames: _detect_same_size(detector, frames, max_side), batch_size,
                        key=lambda frame: frame.shape)


def detect_faces(detector, frames: list[np.ndarray], batch_size: int = 32,
                 max_side: int | None = None) -> list[list[Face]]:
    """Faces of each RGB frame; frames of the same size are detected together, `batch_size` per MTCNN call.

    With `max_side`, a frame whose longest side is above it is detected on a copy scaled down to that
    side (cv2 INTER_AREA), and the boxes and landmarks are mapped back to the frame's own pixels (pixel
    centers aligned, as the resize does), so callers crop from the full-resolution frame. A frame at or
    below `max_side` is detected as it is.
    """
    if not frames:
        return []
    batcher = face_batcher(detector, batch_size, max_side)
    batcher.add(0, frames)
    batcher.flush()
    [(_, faces)] = batcher.done()
    return faces


def select_face(faces: list[Face], frame_width: int, frame_height: int, speaker: str,
                face_selection: dict) -> Face | None:
    """The speaker's face in one frame, or None.

    side: the speaker's gender letter is the last character of `speaker` (IEMOCAP "Ses01_F");
        among faces whose box center lies on the mapped half of the frame, the most confident.
    largest_central: the largest box; boxes within AREA_TIE_FRACTION of the largest area tie and
        the one whose center is nearest the frame center wins.
    """
    if not faces:
        return None
    if face_selection["mode"] == "side":
        letter = speaker[-1:].upper()
        sides = {k.upper(): v for k, v in face_selection["sides"].items()}
        if letter not in sides:
            raise ValueError(f"speaker {speaker!r}: face_selection side mode maps letters {sorted(sides)}, "
                             f"but the speaker's last character is {letter!r}; fix the manifest speaker or the "
                             "sides mapping")
        half = frame_width / 2
        on_side = [f for f in faces if (f.center[0] < half) == (sides[letter] == "left")]
        return max(on_side, key=lambda f: f.prob) if on_side else None
    largest = max(f.area for f in faces)
    tied = [f for f in faces if f.area >= (1 - AREA_TIE_FRACTION) * largest]
    cx, cy = frame_width / 2, frame_height / 2
    return min(tied, key=lambda f: math.hypot(f.center[0] - cx, f.center[1] - cy))


def alignment_matrix(face: Face, size: int, margin: float) -> np.ndarray:
    """2x3 affine map from frame pixels to a size x size crop: rotate about the box center so the
    eyes are level, scale so the margin-padded box fills the crop, center it."""
    (lx, ly), (rx, ry) = face.landmarks[0], face.landmarks[1]
    angle = math.degrees(math.atan2(float(ry - ly), float(rx - lx)))
    cx, cy = face.center
    side = max(float(face.box[2] - face.box[0]), float(face.box[3] - face.box[1]), 1.0) * (1 + 2 * margin)
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    matrix[0, 2] += size / 2 - cx
    matrix[1, 2] += size / 2 - cy
    return matrix


def align_face(frame: np.ndarray, face: Face, size: int, margin: float) -> np.ndarray:
    """Aligned square RGB uint8 crop [size, size, 3]; pixels outside the frame repeat the border."""
    return cv2.warpAffine(frame, alignment_matrix(face, size, margin), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def thinned_indices(n: int, max_frames: int) -> list[int]:
    """Which of n sampled frames an utterance keeps: all of them, or max_frames spread evenly (both ends
    included) when there are more."""
    if n <= max_frames:
        return list(range(n))
    return np.linspace(0, n - 1, max_frames).round().astype(int).tolist()


def sample_timed_frames(video_path: str | Path, start: float | None, end: float | None, fps: float,
                        max_frames: int) -> list[tuple[float, np.ndarray]]:
    """(time, RGB frame) at `fps` inside [start, end); more than max_frames are thinned evenly over the span.

    Memory does not grow with the utterance: which sampled frames are kept (thinned_indices) is decided
    before decoding, from the number of sampled frames the packets' timestamps give
    (media.count_sampled_frames), and only those are converted and held, so at most max_frames frames
    are alive whatever the clip's length. The decoding pass counts the sampled frames itself; where
    that differs from the prediction (or the packets cannot tell) it decodes once more with the real
    count, so the selection is always exactly "every sampled frame, then thinned".
    """
    n = count_sampled_frames(video_path, start, end, fps)
    if n is None:  # no prediction: count in a decoding pass that keeps nothing
        n = sum(1 for _ in iter_frames(video_path, start, end, fps=fps, keep=lambda i: False))
    for _attempt in range(2):
        wanted = thinned_indices(n, max_frames)
        wanted_set = set(wanted)
        kept: dict[int, tuple[float, np.ndarray]] = {}
        count = 0
        for t, frame in iter_frames(video_path, start, end, fps=fps, keep=wanted_set.__contains__):
            if frame is not None:
                kept[count] = (t, frame)
            count += 1
        if count == n:
            return [kept[i] for i in wanted]
        logger.debug("%s: %d sampled frames predicted, %d decoded; decoding again", video_path, n, count)
        kept.clear()
        n = count
    raise MediaError("corrupt_video", video_path, f"the decoder gave {n} and then {count} sampled frames")


def sample_frames(video_path: str | Path, start: float | None, end: float | None, fps: float,
                  max_frames: int) -> list[np.ndarray]:
    """RGB frames at `fps` inside [start, end); more than max_frames are thinned evenly over the span
    (sample_timed_frames: at most max_frames frames are held while decoding)."""
    return [frame for _, frame in sample_timed_frames(video_path, start, end, fps, max_frames)]


def crops_from_faces(frames: list[np.ndarray], faces_per_frame: list[list[Face]], speaker: str, settings: dict,
                     face_selection: dict) -> list[np.ndarray]:
    """Aligned crops of the speaker's face (select_face), one per frame in which it was found."""
    crops = []
    for frame, faces in zip(frames, faces_per_frame):
        height, width = frame.shape[:2]
        face = select_face(faces, width, height, speaker, face_selection)
        if face is not None:
            crops.append(align_face(frame, face, settings["image_size"], settings["face_margin"]))
    return crops


def speaker_crops(frames: list[np.ndarray], speaker: str, settings: dict, face_selection: dict,
                  detector) -> list[np.ndarray]:
    """Aligned crops of the speaker's face, one per frame in which it was found."""
    if not frames:
        return []
    faces_per_frame = detect_faces(detector, frames, settings["batch_size"], detect_max_side(settings))
    return crops_from_faces(frames, faces_per_frame, speaker, settings, face_selection)


def utterance_face_crops(video_path, start, end, speaker: str, settings: dict, face_selection: dict, *,
                         detector=None) -> list[np.ndarray]:
    """Aligned RGB crops (image_size square) of the speaker's face in one utterance.

    Raises ercpipe.io.media.MediaError (reason missing_video / corrupt_video / no_video) when the
    video cannot be read. Pass `detector` (from build_detector) to reuse one MTCNN across calls.
    """
    settings = visual_settings(settings)
    detect_max_side(settings)  # a bad value fails before any decoding
    face_selection = face_selection_settings(face_selection)
    detector = detector if detector is not None else build_detector(settings)
    frames = sample_frames(video_path, start, end, settings["fps"], settings["max_frames"])
    return speaker_crops(frames, speaker, settings, face_selection, detector)


# ----------------------------------------------------------------------------------------- backbones

class FaceEmbedder:
    """A backbone plus its preprocessing; `embed(crops)` -> float32 [n, dim]."""

    def __init__(self, backbone: str, model: torch.nn.Module, image_size: int, device: torch.device,
                 weights_source: str, warning: str = ""):
        self.backbone = backbone
        self.model = model.to(device).eval()
        self.image_size = image_size
        self.device = device
        self.dim = BACKBONES[backbone][0]
        self.weights_source = weights_source
        self.warning = warning

    def _tensor(self, crops: list[np.ndarray]) -> torch.Tensor:
        size = self.image_size
        resized = [c if c.shape[:2] == (size, size) else cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA)
                   for c in crops]
        if self.backbone == "denseface":
            gray = np.stack([cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in resized]).astype(np.float32)
            batch = ((gray - denseface_mod.GRAY_MEAN) / denseface_mod.GRAY_STD)[:, None]
        else:
            rgb = np.stack(resized).astype(np.float32) / 255.0
            batch = ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone == "denseface":
            return self.model(x)
        maps = torch.relu(self.model.features(x))
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(maps, 1), 1)

    @torch.inference_mode()
    def embed(self, crops: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        parts = [self._forward(self._tensor(crops[i:i + batch_size])).float().cpu().numpy()
                 for i in range(0, len(crops), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)



def _seeded(build):
    # Random init must be identical in every shard job, or the shards would not be comparable.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()


def _load_densenet121_state(model: torch.nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path} cannot be read as a torch checkpoint ({err})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a densenet121 state dict")
    state = {_OLD_DENSENET_KEY.sub(r"\1\2", k.removeprefix("module.")): v for k, v in state.items()}
    expected = model.state_dict()
    # BatchNorm step counters are absent from older files (torchvision's own); load_state_dict fills them.
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{path} is not a torchvision densenet121 state dict: {len(missing)} missing key(s) "
                         f"{missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]}, shape mismatches "
                         f"{shapes[:3]}; give the ImageNet file {TORCHVISION_DENSENET121_FILE} or a fine-tuned "
                         "torchvision densenet121 state dict")
    model.load_state_dict(state, strict=True)


def load_embedder(settings: dict, device: str | torch.device = "auto", base_dir: Path | None = None) -> FaceEmbedder:
    """The configured backbone with its weights; random init (seeded) is logged and reported. A relative weights
    file is looked for under `base_dir` first (ExtractionContext.base_dir)."""
    settings = visual_settings(settings)
    device = resolve_device(device) if isinstance(device, str) else device
    backbone, weights = settings["backbone"], settings["weights"]
    if weights not in (None, "random"):
        weights = under_base(base_dir, weights, Path.is_file)
    warning = ""
    if backbone == "densenet121":
        model = _seeded(lambda: torchvision.models.densenet121(weights=None))
        path = Path(weights) if weights not in (None, "random") else None
        if weights is None:
            cached = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_DENSENET121_FILE
            path = cached if cached.exists() else None
            if path is None:
                warning = (f"no densenet121 weights: settings weights is null and {cached} does not exist; "
                           "using RANDOM (seeded) weights, so visual features carry no learned face information. "
                           "Set weights to the ImageNet file or a fine-tuned checkpoint for real experiments.")
        if path is not None:
            if not path.exists():
                raise FileNotFoundError(f"densenet121 weights {path} do not exist; fix visual weights in the config")
            _load_densenet121_state(model, path)
    else:
        if weights not in (None, "random"):
            model = denseface_mod.load_denseface(weights)
            path = Path(weights)
        else:
            model, path = _seeded(denseface_mod.DenseFace), None
            if weights is None:
                warning = ("no DenseFace weights configured (settings weights is null); using RANDOM (seeded) "
                           "weights. Train or convert a DenseFace checkpoint and set weights to its path.")
    if path is not None:
        source = f"{path} (sha256 {file_digest(path)})"
    else:
        source = f"random (seed {RANDOM_SEED})"
    if warning:
        logger.warning(warning)
    else:
        logger.info("visual backbone %s, weights %s", backbone, source)
    return FaceEmbedder(backbone, model, settings["image_size"], device, source, warning)


# ----------------------------------------------------------------------------------------- shards

def _flag_reason(row) -> str:
    flagged = [f for f in VIDEO_FLAGS if manifest_io.has_flag(row.flags, f)]
    if flagged:
        where = row.video_path or "no video_path"
        return f"{flagged[0]}: {where}: flagged by the dataset's reader (issues.tsv says why)"
    if not row.video_path and manifest_io.has_flag(row.flags, "bad_time"):  # a dialogue video it cannot be cut from
        return "bad_time: no usable times to cut the video (issues.tsv says why)"
    return "" if row.video_path else "no_video"


def _prefetched_frames(rows, settings: dict) -> Iterator[tuple[object, list[np.ndarray] | None, str]]:
    """(row, frames, reason) per row; the next row's frames decode in a thread while this one is embedded."""
    def load(row) -> tuple[list[np.ndarray] | None, str]:
        reason = _flag_reason(row)
        if reason:
            return None, reason
        require_readable(row.video_path)  # stop: a chmod fixes it without a new mtime, so zeros would stay
        try:
            return sample_frames(row.video_path, row.video_start, row.video_end, settings["fps"],
                                 settings["max_frames"]), ""
        except MediaError as err:
            return None, f"{err.reason}: {err}"
        except (OSError, ValueError, UnicodeDecodeError) as err:
            # PyAV raises these (not FFmpegError) for some damaged containers and headers.
            return None, f"corrupt_video: {row.video_path}: {type(err).__name__}: {err}"

    row_list = list(rows)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, row_list[0]) if row_list else None
        for i, row in enumerate(row_list):
            frames, reason = pending.result()
            pending = pool.submit(load, row_list[i + 1]) if i + 1 < len(row_list) else None
            yield row, frames, reason


def effective_batch_size(batch_size: int, device: torch.device) -> int:
    """Frames per MTCNN call and crops per backbone call in extract_shard: `batch_size` on CUDA, at most
    CPU_MAX_BATCH elsewhere."""
    return batch_size if device.type == "cuda" else min(batch_size, CPU_MAX_BATCH)


def extract_shard(manifest_path, settings: dict | None, out_path, *, threads: int = 1, device: str = "auto",
                  context: ExtractionContext | None = None) -> None:
    """Face features for the utterances of the manifest (a job's shard manifest), written to `out_path`
    (HDF5); the call shape of every extractor (ercpipe.features.interface). `context.face_selection` is the
    dataset's rule for which face is the speaker (default: the largest central face)."""
    settings = visual_settings(settings)
    detect_max_side(settings)  # a bad value fails before any model is loaded
    face_selection = face_selection_settings((context or NO_CONTEXT).face_selection)
    torch.set_num_threads(max(1, int(threads)))
    rows = manifest_io.read(manifest_path)
    ids = rows["utterance_id"].tolist()
    torch_device = resolve_device(device)
    logger.info("visual %s: %d utterances, %s on %s, %d thread(s), face selection %s", manifest_path, len(ids),
                settings["backbone"], torch_device, torch.get_num_threads(), face_selection)
    detector = build_detector(settings, torch_device)
    embedder = load_embedder(settings, torch_device, (context or NO_CONTEXT).base_dir)

    feats = np.zeros((len(ids), embedder.dim), dtype=np.float32)
    present = np.zeros(len(ids), dtype=bool)
    absent: dict[str, str] = {}
    frame_count = face_count = 0
    batch_size = effective_batch_size(settings["batch_size"], torch_device)
    # Frames of consecutive utterances share MTCNN calls, and their crops share backbone calls (batch_size
    # each; CrossBatcher), with the faces and features each utterance alone would get (to float rounding).
    # At most about batch_size frames wait for a batch (plus the frames of the utterances they belong to).
    detection = face_batcher(detector, batch_size, detect_max_side(settings))
    embedding = CrossBatcher(lambda crops: list(embedder.embed(crops, batch_size)), batch_size)
    waiting: dict[int, tuple[object, list[np.ndarray]]] = {}  # row index -> (row, frames) in detection

    def finish(flush: bool = False) -> None:
        nonlocal face_count
        if flush:
            detection.flush()
        for i, faces_per_frame in detection.done():
            row, frames = waiting.pop(i)
            crops = crops_from_faces(frames, faces_per_frame, row.speaker, settings,
                                     face_selection_for(face_selection, row.dialogue_id))
            face_count += len(crops)
            if not crops:
                absent[row.utterance_id] = f"no_face (no speaker face in {len(frames)} sampled frame(s))"
                logger.debug("visual of %s absent: %s", row.utterance_id, absent[row.utterance_id])
                continue
            embedding.add(i, crops)
        if flush:
            embedding.flush()
        for i, vectors in embedding.done():
            feats[i] = np.stack(vectors).mean(axis=0)
            present[i] = True

    progress = tqdm(_prefetched_frames(rows.itertuples(index=False), settings), total=len(ids),
                    desc="visual", unit="utt")
    for i, (row, frames, reason) in enumerate(progress):
        if not reason and not frames:
            # Probed only here, for the rare row without a frame: the window's or the file's fault says what to fix.
            problem = empty_window_problem(row.video_path, row.video_start, row.video_end, "video")
            reason = ": ".join(problem) if problem else \
                "no_frames (the video has no frame inside the utterance's time window)"
        frame_count += len(frames or [])
        if reason:
            absent[row.utterance_id] = reason
            logger.debug("visual of %s absent: %s", row.utterance_id, reason)
            continue
        waiting[i] = (row, frames)
        detection.add(i, frames)
        # Frames of several sizes (clips of different resolutions) could wait in several part-filled queues.
        finish(flush=detection.held >= batch_size)
    finish(flush=True)
    absent = {uid: absent[uid] for uid in ids if uid in absent}  # manifest order, as written before
    feature_io.log_absent_summary("visual", absent, len(ids), logger)
    logger.info("visual %s: speaker face found in %d of %d sampled frames", manifest_path, face_count, frame_count)
    attrs = {
        "modality": "visual", "extractor": f"mtcnn+{settings['backbone']}", "model": settings["backbone"],
        "settings": stored_settings(settings, face_selection),
        "versions": feature_io.package_versions(["facenet-pytorch", "torch", "torchvision", "av", "ercpipe"]),
        "absent": json.dumps(absent, sort_keys=True),
        "weights_source": embedder.weights_source,
        "computed_on": device_description(embedder.device, "fp32"),
    }
    if embedder.warning:
        attrs["warning"] = embedder.warning
    feature_io.write(out_path, feature_io.FeatureSet(ids, feats, present, attrs))
