"""Procedural scenes: numpy canvases with shapes, pixel-font digits and icon grids.

Every function takes a `numpy.random.Generator` and draws from it in a fixed order, so a
seed fixes the pixels. Images are HxWx3 uint8 arrays; `png_bytes` encodes one.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from dowser.world.config import STYLE_NAMES

SHAPES = ("circle", "square", "triangle", "cross")
# Saturated, mutually distant RGB centres; +-15 jitter per channel keeps them apart.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 220, 50),
    "purple": (160, 60, 200),
    "white": (235, 235, 235),
}
STYLES = STYLE_NAMES  # one list for the config check and the drawing

# 3x5 pixel font; world-textvqa draws it at scale 4 (12x20 px), one font pixel per patch.
_FONT = {
    "0": ["###", "#.#", "#.#", "#.#", "###"],
    "1": [".#.", "##.", ".#.", ".#.", "###"],
    "2": ["###", "..#", "###", "#..", "###"],
    "3": ["###", "..#", "###", "..#", "###"],
    "4": ["#.#", "#.#", "###", "..#", "..#"],
    "5": ["###", "#..", "###", "..#", "###"],
    "6": ["###", "#..", "###", "#.#", "###"],
    "7": ["###", "..#", ".#.", ".#.", ".#."],
    "8": ["###", "#.#", "###", "#.#", "###"],
    "9": ["###", "#.#", "###", "..#", "###"],
}

# 7x7 icons for the icon-grid task (not seen in pretraining).
ICONS = {
    "star": ["...#...", "...#...", "#######", ".#####.", "..###..", ".##.##.", ".#...#."],
    "heart": [".##.##.", "#######", "#######", ".#####.", "..###..", "...#...", "......."],
    "arrow": ["...#...", "..###..", ".#####.", "#######", "..###..", "..###..", "..###.."],
    "moon": ["..###..", ".##....", "##.....", "##.....", "##.....", ".##....", "..###.."],
}


def _bitmap(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows], dtype=bool)


_FONT_BITMAPS = {k: _bitmap(v) for k, v in _FONT.items()}
_ICON_BITMAPS = {k: _bitmap(v) for k, v in ICONS.items()}


def background(rng: np.random.Generator, size: int, light: bool = False) -> np.ndarray:
    """A flat grey level plus Gaussian noise: no two images are byte-identical."""
    level = rng.integers(170, 215) if light else rng.integers(15, 60)
    noise = rng.normal(0.0, 8.0, size=(size, size, 3))
    return np.clip(level + noise, 0, 255).astype(np.uint8)


def shape_mask(shape: str, size: int, cx: float, cy: float, s: float) -> np.ndarray:
    """Boolean mask of `shape` with extent `s` px centred at (cx, cy)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy, h = x - cx, y - cy, s / 2.0
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":
        # apex up: the half-width grows linearly from the top to the base.
        t = (dy + h) / (2 * h)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * h)
    if shape == "cross":
        arm = max(h / 3.0, 1.0)
        inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
        return inside & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    raise ValueError(f"unknown shape {shape!r}")


def jitter_colour(rng: np.random.Generator, colour: str) -> np.ndarray:
    base = np.array(COLOURS[colour], dtype=np.int16)
    return np.clip(base + rng.integers(-15, 16, size=3), 0, 255).astype(np.uint8)


def paint(img: np.ndarray, mask: np.ndarray, rgb: np.ndarray) -> None:
    img[mask] = rgb


def draw_shape(img, rng, shape: str, colour: str, cx: float, cy: float, s: float) -> None:
    paint(img, shape_mask(shape, img.shape[0], cx, cy, s), jitter_colour(rng, colour))


def draw_digit(img, digit: str, x: int, y: int, rgb, scale: int = 3) -> None:
    """Top-left corner at (x, y); the glyph is 3*scale wide, 5*scale high."""
    glyph = np.kron(_FONT_BITMAPS[digit], np.ones((scale, scale), dtype=bool))
    h, w = glyph.shape
    region = img[y : y + h, x : x + w]
    region[glyph[: region.shape[0], : region.shape[1]]] = rgb


def draw_icon(img, icon: str, x: int, y: int, rgb) -> None:
    glyph = _ICON_BITMAPS[icon]
    region = img[y : y + glyph.shape[0], x : x + glyph.shape[1]]
    region[glyph[: region.shape[0], : region.shape[1]]] = rgb


def _erode(mask: np.ndarray) -> np.ndarray:
    m = mask.copy()
    m[1:, :] &= mask[:-1, :]
    m[:-1, :] &= mask[1:, :]
    m[:, 1:] &= mask[:, :-1]
    m[:, :-1] &= mask[:, 1:]
    return m


def draw_styled(img, rng, shape: str, colour: str, cx, cy, s, style: str) -> None:
    """Style-shifted rendering (ImageNet-R analogue): same shape, different appearance."""
    size = img.shape[0]
    mask = shape_mask(shape, size, cx, cy, s)
    y, x = np.mgrid[0:size, 0:size]
    if style == "outline":
        mask = mask & ~_erode(mask)
    elif style == "stripes":
        mask = mask & ((x + y) % 4 < 2)
    elif style == "dots":
        mask = mask & (x % 3 == 0) & (y % 3 == 0) | (mask & ~_erode(mask))
    elif style == "inverted":
        # light background (drawn by the caller) and a dark, desaturated object
        rgb = 255 - jitter_colour(rng, colour)
        paint(img, mask, (rgb // 3).astype(np.uint8))
        return
    else:
        raise ValueError(f"unknown style {style!r}")
    paint(img, mask, jitter_colour(rng, colour))


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
