"""Drawn faces whose expression shows an emotion: the synthetic corpus's video and the demo's CLIP anchors.

A face is a skin-coloured ellipse with hair, ears, white eyes with iris and pupil, brows, a nose and a
mouth, drawn with OpenCV primitives (anti-aliased). Faces drawn like this, 120-200 px tall, are found
by the real MTCNN (facenet-pytorch) at high confidence, so the synthetic corpus exercises the real
face detector.

The emotion changes the mouth (curve, openness, width, teeth, asymmetry), the brows (angle, height,
asymmetry), the eye openness and a few cues (blush, tear, wrinkles, skin tint). Expressions are keyed
by the canonical emotion names of `ercpipe.labels` (happy, sad, neutral, anger, excited, frustration,
surprise, fear, disgust); any alias (hap, joy, ang ...) is accepted.

Colours are RGB; canvases are uint8 arrays [H, W, 3] drawn on in place.
"""
from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ercpipe.io.atomic import atomic_dir
from ercpipe.labels import canonical_emotion

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Expression:
    """How an emotion moves the face; lengths are fractions of the face height."""

    mouth_curve: float = 0.0  # +1 corners up (smile) .. -1 corners down (frown)
    mouth_open: float = 0.0  # 0 closed .. 1 wide open
    mouth_width: float = 1.0  # relative to a neutral mouth
    teeth: bool = False  # upper teeth visible when the mouth is open
    mouth_asym: float = 0.0  # raises the right mouth corner (disgust, frustration)
    brow_angle: float = 0.0  # +1 inner ends pulled down (anger) .. -1 inner ends raised (sadness, fear)
    brow_raise: float = 0.0  # +1 raised high (surprise) .. -1 lowered
    brow_asym: float = 0.0  # lowers the left brow only (disgust)
    eye_open: float = 1.0  # 1 neutral, <1 narrowed, >1 wide
    blush: bool = False
    tear: bool = False
    brow_wrinkles: bool = False  # vertical lines between the brows
    nose_wrinkles: bool = False
    tint: RGB | None = None  # colour mixed into the skin
    tint_amount: float = 0.0


EXPRESSIONS: dict[str, Expression] = {
    "neutral": Expression(),
    "happy": Expression(mouth_curve=0.7, mouth_open=0.18, mouth_width=1.1, teeth=True, brow_raise=0.15,
                        eye_open=0.85, blush=True),
    "excited": Expression(mouth_curve=0.7, mouth_open=0.6, mouth_width=1.2, teeth=True, brow_raise=0.9,
                          eye_open=1.3, blush=True),
    "sad": Expression(mouth_curve=-0.85, mouth_open=0.35, mouth_width=0.85, brow_angle=-0.6, brow_raise=0.25,
                      eye_open=0.8, tear=True),
    "anger": Expression(mouth_curve=-0.5, mouth_open=0.35, mouth_width=1.05, teeth=True, brow_angle=1.2,
                        brow_raise=-0.5, eye_open=0.85, brow_wrinkles=True, tint=(230, 40, 30), tint_amount=0.22),
    "frustration": Expression(mouth_curve=-0.35, mouth_width=0.95, mouth_asym=0.35, brow_angle=0.6,
                              brow_raise=-0.2, eye_open=0.8, brow_wrinkles=True),
    "surprise": Expression(mouth_open=1.0, mouth_width=0.65, brow_raise=0.6, eye_open=1.25),
    "fear": Expression(mouth_curve=-0.3, mouth_open=0.5, mouth_width=1.25, teeth=True, brow_angle=-0.6,
                       brow_raise=0.8, eye_open=1.35, tint=(200, 215, 255), tint_amount=0.25),
    "disgust": Expression(mouth_curve=-0.4, mouth_open=0.15, mouth_width=0.9, mouth_asym=0.8, brow_angle=0.5,
                          brow_raise=-0.3, brow_asym=0.7, eye_open=0.6, nose_wrinkles=True,
                          tint=(150, 190, 90), tint_amount=0.12),
}
DRAWABLE_EMOTIONS: tuple[str, ...] = tuple(EXPRESSIONS)


@dataclass(frozen=True)
class FaceStyle:
    """Who the face belongs to: colours, hair, proportions and head tilt (degrees, + = counter-clockwise)."""

    skin: RGB = (230, 180, 145)
    hair: RGB = (70, 45, 30)
    iris: RGB = (80, 60, 40)
    lips: RGB = (170, 80, 80)
    shirt: RGB = (60, 90, 150)
    hair_style: str = "short"  # short | long | bun | bald
    aspect: float = 0.76  # face width / height
    tilt: float = 0.0


HAIR_STYLES = ("short", "long", "bun", "bald")

# The corpus actors and the anchor images draw from different palettes, so CLIP anchors are not
# copies of the corpus faces (other skin tones, hair, sizes, backgrounds, tilt).
_CORPUS_SKINS: tuple[RGB, ...] = ((240, 198, 168), (228, 176, 140), (210, 156, 118), (236, 188, 150))
_ANCHOR_SKINS: tuple[RGB, ...] = ((150, 96, 64), (136, 88, 58), (250, 222, 204), (186, 124, 86),
                                  (255, 212, 160), (172, 112, 92))
_HAIRS: tuple[RGB, ...] = ((40, 28, 20), (95, 60, 30), (160, 110, 50), (210, 180, 110), (30, 30, 35), (120, 40, 25))
_IRISES: tuple[RGB, ...] = ((70, 50, 35), (60, 110, 160), (70, 120, 70), (110, 80, 50))
_LIPS: tuple[RGB, ...] = ((170, 80, 80), (190, 95, 100), (150, 70, 70), (200, 110, 110))
_SHIRTS: tuple[RGB, ...] = ((60, 90, 150), (150, 40, 50), (40, 120, 90), (200, 170, 60), (90, 90, 90), (120, 70, 140))


def expression_for(emotion: str) -> Expression:
    """The expression of an emotion given in any spelling ('hap', 'joy', 'Angry'); ValueError if unknown."""
    name = canonical_emotion(emotion)
    if name not in EXPRESSIONS:
        raise ValueError(f"no drawn expression for emotion {emotion!r}; drawable: {list(DRAWABLE_EMOTIONS)} "
                         "(or an alias of one, see ercpipe.labels). For other classes give the anchor set real "
                         "images (images:), mine them from a dataset's faces (mine:) or use official: (docs/anchors.md)")
    return EXPRESSIONS[name]


def random_style(rng: np.random.Generator, palette: str = "corpus", tilt_range: float = 0.0) -> FaceStyle:
    """A random person; palette 'corpus' (actors) or 'anchor' (anchor images: other skins, tilted heads)."""
    if palette not in ("corpus", "anchor"):
        raise ValueError(f"unknown face palette {palette!r}; use 'corpus' or 'anchor'")
    skins = _CORPUS_SKINS if palette == "corpus" else _ANCHOR_SKINS

    def pick(options):
        return tuple(int(c) for c in options[int(rng.integers(len(options)))])

    skin = pick(skins)
    # Hair lighter than the skin (blond on dark skin) makes MTCNN miss drawn faces; keep it darker.
    hairs = [h for h in _HAIRS if _luminance(h) <= 0.6 * _luminance(skin)] or [min(_HAIRS, key=_luminance)]
    return FaceStyle(skin=skin, hair=pick(hairs), iris=pick(_IRISES), lips=pick(_LIPS),
                     shirt=pick(_SHIRTS), hair_style=HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))],
                     aspect=float(rng.uniform(0.72, 0.82)),
                     tilt=float(rng.uniform(-tilt_range, tilt_range)) if tilt_range else 0.0)


def _luminance(colour: RGB) -> float:
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b


def _mix(colour: RGB, other: RGB, amount: float) -> RGB:
    return tuple(int(round((1 - amount) * c + amount * o)) for c, o in zip(colour, other))


def _pts(points: np.ndarray) -> np.ndarray:
    return np.round(points).astype(np.int32).reshape(-1, 1, 2)


def _draw_outline_shapes(img: np.ndarray, c: float, h: float, style: FaceStyle, skin: RGB, shade: RGB,
                         hair: RGB) -> None:
    """Hair, neck, ears and the face ellipse: everything that makes up the head's silhouette."""
    aa = cv2.LINE_AA
    a, b = style.aspect * h / 2, h / 2  # face ellipse half-axes
    ci = int(round(c))
    # Hair behind the head (long hair falls to the jaw, a bun sits on top).
    if style.hair_style == "long":
        cv2.ellipse(img, (ci, int(c + 0.05 * h)), (int(a * 1.18), int(b * 1.08)), 0, 0, 360, hair, -1, aa)
    if style.hair_style == "bun":
        cv2.circle(img, (ci, int(c - b * 1.02)), int(0.16 * h), hair, -1, aa)
    cv2.rectangle(img, (int(c - 0.17 * h), int(c + 0.3 * h)), (int(c + 0.17 * h), int(c + 0.75 * h)), shade, -1)
    for side in (-1, 1):
        cv2.ellipse(img, (int(c + side * a * 0.98), int(c - 0.02 * h)), (int(0.07 * h), int(0.11 * h)),
                    0, 0, 360, shade, -1, aa)
    cv2.ellipse(img, (ci, ci), (int(a), int(b)), 0, 0, 360, skin, -1, aa)
    cv2.ellipse(img, (ci, ci), (int(a), int(b)), 0, 0, 360, shade, max(1, int(0.012 * h)), aa)
    # Hair on top of the forehead.
    if style.hair_style != "bald":
        # A cap down to 0.25 h above the center, then a curved hairline carved back in skin colour.
        cv2.ellipse(img, (ci, int(c - 0.25 * h)), (int(a * 1.06), int(0.33 * h)), 0, 180, 360, hair, -1, aa)
        cv2.ellipse(img, (ci, int(c - 0.25 * h)), (int(a * 0.93), int(0.09 * h)), 0, 180, 360, skin, -1, aa)


def _draw_head(img: np.ndarray, c: float, h: float, expr: Expression, style: FaceStyle) -> None:
    """Head, hair and features centered at (c, c) of a square RGB patch (black background)."""
    aa = cv2.LINE_AA
    skin = _mix(style.skin, expr.tint, expr.tint_amount) if expr.tint else style.skin
    shade = _mix(skin, (60, 30, 20), 0.35)
    _draw_outline_shapes(img, c, h, style, skin, shade, style.hair)

    eye_y = c - 0.07 * h
    eye_dx = 0.19 * h
    # Cheeks and tear go under the eyes.
    if expr.blush:
        for side in (-1, 1):
            cv2.ellipse(img, (int(c + side * 0.24 * h), int(c + 0.1 * h)), (int(0.07 * h), int(0.04 * h)),
                        0, 0, 360, _mix(skin, (235, 90, 110), 0.45), -1, aa)
    # Eyes: white, iris, pupil, upper lid.
    eye_half_h = 0.05 * h * expr.eye_open
    for side in (-1, 1):
        ex = c + side * eye_dx
        center = (int(ex), int(eye_y))
        cv2.ellipse(img, center, (int(0.085 * h), max(2, int(eye_half_h))), 0, 0, 360, (250, 250, 250), -1, aa)
        iris_r = max(2, int(min(0.042 * h, eye_half_h * 1.05)))
        cv2.circle(img, center, iris_r, style.iris, -1, aa)
        cv2.circle(img, center, max(1, int(iris_r * 0.5)), (15, 15, 15), -1, aa)
        cv2.circle(img, (int(ex + 0.012 * h), int(eye_y - 0.012 * h)), max(1, int(0.01 * h)), (255, 255, 255), -1, aa)
        cv2.ellipse(img, center, (int(0.085 * h), max(2, int(eye_half_h))), 0, 180, 360, (40, 30, 30),
                    max(1, int(0.012 * h)), aa)
    if expr.tear:
        tx, ty = int(c - eye_dx - 0.05 * h), int(eye_y + 0.17 * h)
        cv2.ellipse(img, (tx, ty), (int(0.018 * h), int(0.03 * h)), 0, 0, 360, (120, 180, 240), -1, aa)
    # Brows: inner ends at +-0.07 h, outer ends at +-0.3 h from the center line.
    brow_y = eye_y - 0.1 * h - expr.brow_raise * 0.055 * h
    thickness = max(2, int(0.028 * h))
    for side in (-1, 1):
        drop = expr.brow_asym * 0.04 * h if side < 0 else 0.0
        inner = (c + side * 0.07 * h, brow_y + expr.brow_angle * 0.045 * h + drop)
        outer = (c + side * 0.29 * h, brow_y - expr.brow_angle * 0.02 * h - 0.01 * h + drop)
        mid = ((inner[0] + outer[0]) / 2, (inner[1] + outer[1]) / 2 - 0.015 * h)
        cv2.polylines(img, [_pts(np.array([inner, mid, outer]))], False, _mix(style.hair, (20, 15, 10), 0.65),
                      thickness, aa)
    if expr.brow_wrinkles:
        for dx in (-0.025, 0.025):
            cv2.line(img, (int(c + dx * h), int(brow_y + 0.0 * h)), (int(c + dx * h), int(brow_y + 0.07 * h)),
                     shade, max(1, int(0.01 * h)), aa)
    # Nose: bridge line and nostrils.
    nose = np.array([(c - 0.005 * h, eye_y + 0.03 * h), (c - 0.04 * h, c + 0.12 * h), (c + 0.03 * h, c + 0.135 * h)])
    cv2.polylines(img, [_pts(nose)], False, shade, max(1, int(0.016 * h)), aa)
    for side in (-1, 1):
        cv2.ellipse(img, (int(c + side * 0.035 * h), int(c + 0.14 * h)), (int(0.018 * h), int(0.01 * h)),
                    0, 0, 360, _mix(shade, (0, 0, 0), 0.3), -1, aa)
    if expr.nose_wrinkles:
        for k in range(3):
            y = eye_y + 0.035 * h + k * 0.018 * h
            cv2.line(img, (int(c - 0.035 * h), int(y)), (int(c + 0.035 * h), int(y)), shade, max(1, int(0.008 * h)), aa)
    _draw_mouth(img, c, h, expr, style.lips)


def _draw_mouth(img: np.ndarray, c: float, h: float, expr: Expression, lips: RGB) -> None:
    aa = cv2.LINE_AA
    mouth_y = c + 0.26 * h
    half_w = 0.14 * h * expr.mouth_width
    u = np.linspace(-1.0, 1.0, 25)
    xs = c + u * half_w
    # Corners move up for a smile, down for a frown; the asymmetry lifts the right corner only.
    upper = mouth_y - expr.mouth_curve * 0.075 * h * u ** 2 - expr.mouth_asym * 0.06 * h * np.clip(u, 0, None) ** 2
    lip_thickness = max(2, int(0.024 * h))
    if expr.mouth_open <= 0.05:
        cv2.polylines(img, [_pts(np.stack([xs, upper], 1))], False, lips, lip_thickness, aa)
        return
    depth = expr.mouth_open * 0.16 * h * (1 - u ** 2) ** 0.6
    lower = upper + depth
    outline = np.concatenate([np.stack([xs, upper], 1), np.stack([xs, lower], 1)[::-1]])
    cv2.fillPoly(img, [_pts(outline)], (90, 25, 35), aa)
    if expr.teeth:
        teeth_edge = upper + np.minimum(depth, 0.045 * h)
        teeth = np.concatenate([np.stack([xs, upper], 1), np.stack([xs, teeth_edge], 1)[::-1]])
        cv2.fillPoly(img, [_pts(teeth)], (245, 245, 240), aa)
    cv2.polylines(img, [_pts(outline)], True, lips, lip_thickness, aa)


def draw_face(canvas: np.ndarray, center: tuple[float, float], height: float, emotion: str,
              style: FaceStyle = FaceStyle()) -> None:
    """Draw a head `height` px tall (chin to crown) centered at `center` (x, y) showing `emotion`, in place.

    The head is drawn on a square patch (so it can be tilted by `style.tilt`) and composited onto the
    canvas; parts outside the canvas are clipped.
    """
    expr = expression_for(emotion)
    size = int(math.ceil(height * 1.9)) | 1
    c = size / 2
    patch = np.zeros((size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    _draw_head(patch, c, height, expr, style)
    _draw_silhouette(mask, c, height, style)
    if style.tilt:
        rot = cv2.getRotationMatrix2D((c, c), style.tilt, 1.0)
        patch = cv2.warpAffine(patch, rot, (size, size), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(mask, rot, (size, size), flags=cv2.INTER_LINEAR)
    _composite(canvas, patch, mask, int(round(center[0] - c)), int(round(center[1] - c)))


def _draw_silhouette(mask: np.ndarray, c: float, h: float, style: FaceStyle) -> None:
    """Coverage of the head (255 = opaque; only the anti-aliased outer edge is partial)."""
    white = (255, 255, 255)
    _draw_outline_shapes(mask, c, h, style, white, white, white)


def draw_body(canvas: np.ndarray, center: tuple[float, float], height: float, style: FaceStyle) -> None:
    """Shoulders and torso below a head of `height` px centered at `center`; draw before the face."""
    cx, cy = center
    top = cy + 0.62 * height
    cv2.ellipse(canvas, (int(cx), int(top + 0.55 * height)), (int(0.85 * height), int(0.6 * height)),
                0, 180, 360, style.shirt, -1, cv2.LINE_AA)
    bottom = canvas.shape[0]
    if top + 0.55 * height < bottom:
        cv2.rectangle(canvas, (int(cx - 0.85 * height), int(top + 0.55 * height)),
                      (int(cx + 0.85 * height), bottom), style.shirt, -1)


def _composite(canvas: np.ndarray, patch: np.ndarray, mask: np.ndarray, x0: int, y0: int) -> None:
    h, w = canvas.shape[:2]
    px0, py0 = max(0, -x0), max(0, -y0)
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(w, x0 + patch.shape[1]), min(h, y0 + patch.shape[0])
    if cx1 <= cx0 or cy1 <= cy0:
        return
    # The patch was drawn anti-aliased on black, i.e. its edge colours are premultiplied by coverage.
    sub_patch = patch[py0:py0 + cy1 - cy0, px0:px0 + cx1 - cx0].astype(np.float32)
    alpha = mask[py0:py0 + cy1 - cy0, px0:px0 + cx1 - cx0, None].astype(np.float32) / 255.0
    region = canvas[cy0:cy1, cx0:cx1].astype(np.float32)
    canvas[cy0:cy1, cx0:cx1] = np.clip(np.round(region * (1 - alpha) + sub_patch), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ backgrounds

def room_background(width: int, height: int, wall: RGB, rng: np.random.Generator) -> np.ndarray:
    """An indoor scene: wall with a vertical light gradient, a floor band, a window or picture frame."""
    ramp = np.linspace(1.08, 0.88, height, dtype=np.float32)[:, None, None]
    canvas = np.clip(np.asarray(wall, np.float32)[None, None, :] * ramp, 0, 255)
    canvas = np.repeat(canvas, width, axis=1).astype(np.uint8)
    floor_y = int(height * rng.uniform(0.78, 0.88))
    canvas[floor_y:] = _mix(wall, (90, 70, 50), 0.6)
    fx = int(rng.uniform(0.05, 0.75) * width)
    fw, fh = int(width * rng.uniform(0.12, 0.2)), int(height * rng.uniform(0.18, 0.3))
    fy = int(height * rng.uniform(0.08, 0.2))
    cv2.rectangle(canvas, (fx, fy), (fx + fw, fy + fh), _mix(wall, (255, 255, 255), 0.5), -1)
    cv2.rectangle(canvas, (fx, fy), (fx + fw, fy + fh), _mix(wall, (40, 30, 20), 0.5), max(2, width // 160))
    return np.ascontiguousarray(canvas)


def _background_colour(rng: np.random.Generator, skin: RGB) -> np.ndarray:
    """A muted random colour at least 70 luminance levels away from the skin (a face must stand out)."""
    for _ in range(50):
        colour = (0.6 * rng.integers(0, 256, 3) + 0.4 * 128).astype(np.float32)
        if abs(_luminance(tuple(colour)) - _luminance(skin)) >= 70:
            return colour
    return np.full(3, 235.0 if _luminance(skin) < 128 else 40.0, np.float32)


def anchor_background(size: int, rng: np.random.Generator, skin: RGB) -> np.ndarray:
    """A background unlike the corpus rooms: diagonal gradient, stripes, or a blurred colour-noise field."""
    kind = int(rng.integers(3))
    c1 = _background_colour(rng, skin)
    c2 = _background_colour(rng, skin)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)
    if kind == 0:
        t = ((xx + yy) / 2)[..., None]
        canvas = c1 * (1 - t) + c2 * t
    elif kind == 1:
        period = rng.uniform(0.08, 0.2)
        angle = rng.uniform(0, math.pi)
        t = ((np.cos(angle) * xx + np.sin(angle) * yy) / period % 1.0 < 0.5)[..., None].astype(np.float32)
        canvas = c1 * (1 - t) + c2 * t
    else:
        noise = rng.random((max(2, size // 16), max(2, size // 16), 3)).astype(np.float32)
        noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
        canvas = c1 * (1 - noise) + c2 * noise
    return np.ascontiguousarray(np.clip(canvas, 0, 255).astype(np.uint8))


# ------------------------------------------------------------------------------------ anchor images

ANCHOR_IMAGE_SIZE = 256


def anchor_image(emotion: str, rng: np.random.Generator, size: int = ANCHOR_IMAGE_SIZE) -> np.ndarray:
    """One anchor picture: a tilted face of a random anchor-palette person showing `emotion`."""
    style = random_style(rng, palette="anchor", tilt_range=12.0)
    canvas = anchor_background(size, rng, style.skin)
    face_h = size * rng.uniform(0.5, 0.68)
    center = (size * rng.uniform(0.42, 0.58), size * rng.uniform(0.42, 0.52))
    draw_body(canvas, center, face_h, style)
    draw_face(canvas, center, face_h, emotion, style)
    return canvas


# An anchor set's `synthetic:` settings and their defaults (written out, the same setting).
ANCHOR_IMAGE_DEFAULTS: dict = {"per_class": 6, "seed": 0}


def make_anchor_image_set(out_dir: Path, class_names: list[str], per_class: int, seed: int) -> None:
    """Write out_dir/{class}/{i:03d}.png: `per_class` drawn faces per class showing that class's emotion.

    Class folders keep the given names (e.g. 'hap' or 'happy'); the expression comes from the name's
    canonical emotion. The anchor faces differ from the corpus actors (skin tones, hair, face size,
    backgrounds, head tilt) so anchors are not copies of training frames. Written atomically.
    """
    if per_class < 0:
        raise ValueError(f"per_class must be a non-negative number of images, got {per_class}")
    if per_class == 0:
        logger.warning("anchor images: per_class is 0, the class folders in %s stay empty", out_dir)
    if not class_names:
        raise ValueError("make_anchor_image_set needs at least one class name")
    duplicates = sorted({name for name in class_names if class_names.count(name) > 1})
    if duplicates:
        raise ValueError(f"anchor class names {duplicates} are given more than once")
    for name in class_names:
        expression_for(name)  # unknown emotion -> ValueError before anything is written
    with atomic_dir(out_dir) as tmp:
        for name in tqdm(class_names, desc="anchor images", unit="class"):
            folder = tmp / name
            folder.mkdir()
            # Seeded by the class name, so a class's pictures do not depend on the other classes asked for.
            rng = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])
            for i in range(per_class):
                Image.fromarray(anchor_image(name, rng)).save(folder / f"{i:03d}.png", optimize=False)
            logger.info("anchor images: %d drawn faces for class %r in %s", per_class, name, out_dir / name)
