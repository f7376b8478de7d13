"""Media in the real datasets' formats, with real photographs of faces (benchmarks and tests only).

    .venv/bin/python bench/real_format_media.py OUT_DIR      # a small MELD-like and IEMOCAP-like corpus

* MELD-like: one clip per utterance, 1280x720 H.264 (yuv420p, .mp4) + AAC 48 kHz stereo, two or three
  faces, the speaker's the largest and most central (MELD's clips are framed on the speaker).
* IEMOCAP-like: one multi-minute MPEG-4 Part 2 ("DivX", PyAV codec 'mpeg4') .avi per dialogue, 720x480
  at 30000/1001 fps with keyframes every `gop` frames, both actors side by side (the woman on the
  left, the man on the right, as the IEMOCAP side rule maps them); the utterances are time windows
  (video_start / video_end) of that one file, and their audio is 16 kHz mono WAVs, as IEMOCAP ships.

The faces are real photographs from scikit-image (`skimage.data.astronaut()`, a woman, and
`skimage.data.camera()`, a man; mirrored for a third face), so MTCNN's detection is real; each moves a
few pixels from frame to frame and a frame counter is drawn into a corner, so no two frames are equal
(seeking tests compare pixels). The speech is a synthetic voiced signal (harmonics of a gliding F0
under a syllable envelope), enough for openSMILE's cost, which depends on the length, not the words.
scikit-image is a test/benchmark dependency (requirements.txt), never imported by ercpipe.
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ercpipe.io import manifest as manifest_io  # noqa: E402
from ercpipe.io.media import SAMPLE_RATE, write_wav  # noqa: E402

MELD_SIZE = (1280, 720)
MELD_FPS = 24
AUDIO_RATE = 48000
IEMOCAP_SIZE = (720, 480)
IEMOCAP_FPS = Fraction(30000, 1001)
SIDE = {"mode": "side", "sides": {"F": "left", "M": "right"}}  # IEMOCAP's rule, as the configs set it
SENTENCES = ["I cannot believe you did that to me again", "Well, that is fine, we can talk about it later",
             "Oh wow, this is the best news I have heard all year", "Please just leave me alone for a while"]

# Where MTCNN finds the face in each photograph at its own resolution (x1, y1, x2, y2), measured once;
# the crops below are cut around these.
ASTRONAUT_FACE = (180.3, 60.7, 268.4, 172.2)
CAMERA_FACE = (197.0, 115.7, 254.8, 196.4)


def photo(name: str) -> np.ndarray:
    """A real photograph from scikit-image as RGB uint8: 'astronaut' (a woman) or 'camera' (a man)."""
    from skimage import data

    if name == "astronaut":
        return np.ascontiguousarray(data.astronaut())
    if name == "camera":
        return np.ascontiguousarray(np.repeat(data.camera()[..., None], 3, axis=2))
    raise ValueError(f"unknown photograph {name!r}; use 'astronaut' or 'camera'")


def head_patch(name: str, height: int, mirror: bool = False) -> np.ndarray:
    """The head and shoulders of a photograph, scaled to `height` pixels (RGB uint8)."""
    img = photo(name)
    crop = img[0:300, 110:340] if name == "astronaut" else img[40:290, 130:330]
    if mirror:
        crop = crop[:, ::-1]
    width = max(1, int(round(crop.shape[1] * height / crop.shape[0])))
    return cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_AREA)


def place(frame: np.ndarray, patch: np.ndarray, cx: int, cy: int) -> tuple[int, int]:
    """Paste `patch` centered at (cx, cy), clipped to the frame; returns its top-left corner."""
    h, w = patch.shape[:2]
    x0, y0 = cx - w // 2, cy - h // 2
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(frame.shape[1], x0 + w), min(frame.shape[0], y0 + h)
    frame[fy0:fy1, fx0:fx1] = patch[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
    return x0, y0


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A textured room-like background (smooth gradient plus low noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([60 + 40 * x / width, 80 + 30 * y / height, 100 + 20 * (x + y) / (width + height)], axis=-1)
    noise = cv2.GaussianBlur(rng.normal(0, 12, (height, width, 3)).astype(np.float32), (0, 0), 3)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def stamp(frame: np.ndarray, index: int) -> None:
    """Draw the frame number into the bottom-left corner, so every frame differs."""
    cv2.putText(frame, str(index), (8, frame.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)


def speech(seconds: float, rate: int, pitch: float = 0.0, seed: int = 0) -> np.ndarray:
    """A voiced speech-like float32 signal: harmonics of a gliding F0 under a syllable-rate envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + pitch + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 10))
    envelope = np.abs(np.sin(2 * np.pi * 2.5 * t)) ** 0.5
    noise = rng.normal(0, 0.01, t.size)
    return (0.2 * voiced * envelope + noise).astype(np.float32)


def photo_in_frame(name: str, scale: float, x0: int, y0: int, size: tuple[int, int] = MELD_SIZE) -> np.ndarray:
    """A frame of `size` with the whole photograph scaled by `scale` and its top-left corner at (x0, y0)."""
    frame = background(*size)
    img = photo(name)
    h, w = (int(round(n * scale)) for n in img.shape[:2])
    frame[y0:y0 + h, x0:x0 + w] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    return frame


def decode_from_start(path: Path, lo: float, hi: float, fps: float) -> list[tuple[float, np.ndarray]]:
    """(time, RGB frame) sampled at `fps` in [lo, hi) by decoding every frame from the file's first, with
    ercpipe.io.media.iter_frames' sampling rule: the reference its seeking is compared with."""
    from ercpipe.io import media

    out = []
    with av.open(str(path)) as container:
        stream = media._video_stream(container, Path(path))
        origin = media._origin(container)
        grid = media._SamplingGrid(lo, fps)
        for frame in container.decode(stream):
            t = media._seconds(frame.pts, stream, origin)
            if t >= hi:
                break
            if t >= lo and grid.take(t):
                out.append((t, media._upright(frame)))
    return out


# ------------------------------------------------------------------------------------------ MELD-like

def meld_layout(n_faces: int, size: tuple[int, int] = MELD_SIZE) -> list[tuple[str, bool, int, int, int]]:
    """(photograph, mirrored, head height, center x, center y) per face; the first is the speaker's
    (largest, central)."""
    w, h = size
    faces = [("astronaut", False, int(0.62 * h), w // 2, int(0.52 * h)),
             ("camera", False, int(0.42 * h), int(0.17 * w), int(0.55 * h))]
    if n_faces >= 3:
        faces.append(("astronaut", True, int(0.40 * h), int(0.84 * w), int(0.55 * h)))
    return faces[:n_faces]


def write_meld_clip(path: Path, seconds: float = 3.0, n_faces: int = 2, size: tuple[int, int] = MELD_SIZE,
                    fps: int = MELD_FPS, seed: int = 0) -> Path:
    """A MELD-like clip: H.264 yuv420p video of `n_faces` photographed faces + AAC 48 kHz stereo speech."""
    w, h = size
    layout = meld_layout(n_faces, size)
    patches = [head_patch(name, height, mirror) for name, mirror, height, _, _ in layout]
    bg = background(w, h, seed)
    left, right = speech(seconds, AUDIO_RATE, 0, seed), speech(seconds, AUDIO_RATE, 8, seed + 1)
    stereo = np.stack([left, 0.8 * left + 0.2 * right])  # [2, n] planar
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "23"}
        audio = container.add_stream("aac", rate=AUDIO_RATE)
        audio.layout = "stereo"
        n_frames = int(round(seconds * fps))
        for i in range(n_frames):
            img = bg.copy()
            for k, (patch, (_, _, _, cx, cy)) in enumerate(zip(patches, layout)):
                place(img, patch, cx + int(4 * np.sin(0.3 * i + k)), cy + int(2 * np.cos(0.2 * i + k)))
            stamp(img, i)
            container.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(video.encode())
        block = 1024
        for j in range(0, stereo.shape[1], block):
            chunk = np.ascontiguousarray(stereo[:, j:j + block])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate = AUDIO_RATE
            frame.pts = j
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    return path


def make_meld_corpus(root: Path, n_dialogues: int = 2, per_dialogue: int = 4, seconds: float = 3.0) -> Path:
    """MELD-like clips (one per utterance, two or three faces) and their manifest; returns the manifest.
    The audio comes from the clips (run the utterance-audio step, media_prep.write_utterance_audio)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for d in range(n_dialogues):
        for u in range(per_dialogue):
            uid = f"dia{d}_utt{u}"
            clip = write_meld_clip(root / f"{uid}.mp4", seconds, n_faces=2 + (d + u) % 2, seed=d * 100 + u)
            rows.append({"dataset": "meld_like", "split": "train", "dialogue_id": f"dia{d}", "utterance_index": u,
                         "utterance_id": uid, "speaker": f"speaker{u % 2}", "speaker_slot": u % 2,
                         "label": "neutral", "text": SENTENCES[(d + u) % len(SENTENCES)],
                         "audio_path": str(clip), "audio_start": float("nan"), "audio_end": float("nan"),
                         "video_path": str(clip), "video_start": float("nan"), "video_end": float("nan"),
                         "flags": ""})
    manifest = root / "manifest.tsv"
    manifest_io.write(pd.DataFrame(rows), manifest)
    return manifest


# ------------------------------------------------------------------------------------------ IEMOCAP-like

def iemocap_layout(size: tuple[int, int] = IEMOCAP_SIZE) -> list[tuple[str, bool, int, int, int]]:
    """Both actors side by side: the woman (astronaut) left, the man (camera) right."""
    w, h = size
    return [("astronaut", False, int(0.55 * h), int(0.27 * w), int(0.5 * h)),
            ("camera", False, int(0.55 * h), int(0.73 * w), int(0.5 * h))]


def write_iemocap_avi(path: Path, seconds: float = 180.0, size: tuple[int, int] = IEMOCAP_SIZE,
                      fps: Fraction | int = IEMOCAP_FPS, gop: int = 300, bit_rate: int = 1_500_000,
                      seed: int = 0) -> Path:
    """A dialogue-long MPEG-4 Part 2 .avi (PyAV codec 'mpeg4', DivX's family), keyframes every `gop` frames."""
    w, h = size
    layout = iemocap_layout(size)
    patches = [head_patch(name, height, mirror) for name, mirror, height, _, _ in layout]
    bg = background(w, h, seed)
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.bit_rate = bit_rate
        video.codec_context.gop_size = gop
        video.codec_tag = "DX50"
        for i in range(int(round(seconds * float(fps)))):
            img = bg.copy()
            for k, (patch, (_, _, _, cx, cy)) in enumerate(zip(patches, layout)):
                place(img, patch, cx + int(3 * np.sin(0.05 * i + 2 * k)), cy + int(2 * np.cos(0.07 * i + k)))
            stamp(img, i)
            container.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(video.encode())
    return path


def make_iemocap_corpus(root: Path, n_dialogues: int = 1, seconds: float = 180.0, utterances: int = 8,
                        utterance_seconds: float = 3.0, size: tuple[int, int] = IEMOCAP_SIZE) -> tuple[Path, Path]:
    """IEMOCAP-like dialogue AVIs, utterance windows spread over each whole dialogue (alternating speakers,
    `_F` then `_M`), 16 kHz mono WAVs per utterance with the utterance-audio step's report.
    Returns (manifest, audio_dir)."""
    root.mkdir(parents=True, exist_ok=True)
    audio_dir = root / "audio"
    audio_dir.mkdir(exist_ok=True)
    rows, report = [], []
    for d in range(n_dialogues):
        video = write_iemocap_avi(root / f"Ses01F_impro0{d + 1}.avi", seconds, size, seed=d)
        starts = np.linspace(1.0, seconds - utterance_seconds - 0.5, utterances)
        for u, start in enumerate(starts):
            speaker = "F" if u % 2 == 0 else "M"
            uid = f"Ses01F_impro0{d + 1}_{speaker}{u:03d}"
            write_wav(audio_dir / f"{uid}.wav", speech(utterance_seconds, SAMPLE_RATE, 0 if speaker == "F" else -30,
                                                       seed=u))
            report.append({"utterance_id": uid, "status": "ok", "detail": ""})
            rows.append({"dataset": "iemocap_like", "split": "train", "dialogue_id": f"Ses01F_impro0{d + 1}",
                         "utterance_index": u, "utterance_id": uid, "speaker": f"Ses01_{speaker}",
                         "speaker_slot": u % 2, "label": "neu", "text": SENTENCES[u % len(SENTENCES)],
                         "audio_path": str(audio_dir / f"{uid}.wav"), "audio_start": float("nan"),
                         "audio_end": float("nan"), "video_path": str(video), "video_start": float(start),
                         "video_end": float(start + utterance_seconds), "flags": ""})
    pd.DataFrame(report).to_csv(audio_dir / "_report.tsv", sep="\t", index=False)
    manifest = root / "manifest.tsv"
    manifest_io.write(pd.DataFrame(rows), manifest)
    return manifest, audio_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--iemocap-seconds", type=float, default=180.0)
    args = parser.parse_args()
    meld = make_meld_corpus(args.out / "meld")
    iemocap, _ = make_iemocap_corpus(args.out / "iemocap", seconds=args.iemocap_seconds)
    print(meld, iemocap, sep="\n")


if __name__ == "__main__":
    main()
