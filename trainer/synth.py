"""Procedurally generated colour images, an offline pre-training source for colour features.

``shapes``: ten classes of shape (disc, square, triangle, ring, cross, star, bar, crescent, diamond,
arrow), each drawn at a random size, place, rotation and colour over a random two-colour gradient
with noise.  The class is the shape, never the colour, so a network must learn edges between arbitrary
colours (chromatic as well as luminance edges): what Fashion-MNIST's grey images cannot teach a stem.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["COLOURS", "LETTERS", "SHAPES", "colours", "letters", "shapes"]

SHAPES = ["disc", "square", "triangle", "ring", "cross", "star", "bar", "crescent", "diamond", "arrow"]


def _polygon(kind: str, r: float) -> list[tuple[float, float]]:
    if kind == "square":
        return [(-r, -r), (r, -r), (r, r), (-r, r)]
    if kind == "triangle":
        return [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if kind == "star":
        return [((r if i % 2 == 0 else r / 2.4) * math.cos(i * math.pi / 5 - math.pi / 2),
                 (r if i % 2 == 0 else r / 2.4) * math.sin(i * math.pi / 5 - math.pi / 2)) for i in range(10)]
    if kind == "bar":
        return [(-r, -r / 3.5), (r, -r / 3.5), (r, r / 3.5), (-r, r / 3.5)]
    if kind == "diamond":
        return [(0, -r), (r / 1.6, 0), (0, r), (-r / 1.6, 0)]
    if kind == "arrow":
        return [(-r, -r / 4), (r / 5, -r / 4), (r / 5, -r / 1.6), (r, 0), (r / 5, r / 1.6), (r / 5, r / 4),
                (-r, r / 4)]
    if kind == "cross":
        w = r / 3
        return [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w),
                (-w, -w)]
    raise ValueError(kind)


def _draw(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    s = 4 * size  # draw large, then downsample: anti-aliased edges
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, s)[:, None, None]
    bg = (c0 * (1 - t) + c1 * t).repeat(s, axis=1)
    if rng.random() < 0.5:
        bg = bg.transpose(1, 0, 2)
    img = Image.fromarray(np.clip(bg + rng.normal(0, 12, bg.shape), 0, 255).astype(np.uint8))
    fg = tuple(int(v) for v in rng.integers(0, 256, 3))
    while sum(abs(a - b) for a, b in zip(fg, (c0 + c1) // 2)) < 90:  # keep the shape visible
        fg = tuple(int(v) for v in rng.integers(0, 256, 3))
    r = s * rng.uniform(0.18, 0.34)
    cx, cy = rng.uniform(r, s - r, 2)
    d = ImageDraw.Draw(img)
    if kind in ("disc", "ring", "crescent"):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
        if kind != "disc":
            k = 0.55 if kind == "ring" else 0.85
            ox, oy = (0.0, 0.0) if kind == "ring" else (r * 0.45 * math.cos(a := rng.uniform(0, 6.3)),
                                                          r * 0.45 * math.sin(a))
            hole = tuple(int(v) for v in img.getpixel((int(max(0, cx - r - 2)), int(cy))))  # type: ignore[union-attr]
            d.ellipse([cx + ox - k * r, cy + oy - k * r, cx + ox + k * r, cy + oy + k * r], fill=hole)
    else:
        a = rng.uniform(0, 2 * math.pi)
        pts = [(cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a))
               for x, y in _polygon(kind, r)]
        d.polygon(pts, fill=fg)
    return img.resize((size, size), Image.Resampling.BILINEAR)


def shapes(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (uint8 ``[n, 3, size, size]``) and labels, balanced over :data:`SHAPES`."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(SHAPES)
    rng.shuffle(labels)
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    for i, y in enumerate(labels):
        out[i] = np.asarray(_draw(SHAPES[y], size, rng)).transpose(2, 0, 1)
    return torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64))


# -- zoo tasks: data no pre-training source contains ---------------------------------------------

FONT_DIR = "/usr/share/fonts/truetype"
LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
COLOURS = {"red": 0, "orange": 30, "yellow": 58, "green": 120, "cyan": 180, "blue": 225, "purple": 275, "pink": 320}


def _fonts() -> list[str]:
    from pathlib import Path

    fonts = sorted(str(p) for p in Path(FONT_DIR).rglob("*.ttf"))
    if not fonts:
        raise FileNotFoundError(f"no TrueType fonts under {FONT_DIR} (apt-get install fonts-dejavu-core)")
    return fonts


def letters(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey capital letters A-Z rendered from the system's fonts at random size, place and angle."""
    from PIL import ImageFont

    rng = np.random.default_rng(seed)
    fonts = _fonts()
    labels = np.arange(n) % len(LETTERS)
    rng.shuffle(labels)
    out = np.empty((n, 1, size, size), dtype=np.uint8)
    s = 4 * size
    for i, y in enumerate(labels):
        font = ImageFont.truetype(fonts[rng.integers(len(fonts))], int(s * rng.uniform(0.45, 0.75)))
        bg = int(rng.integers(0, 60))
        img = Image.new("L", (s, s), bg)
        d = ImageDraw.Draw(img)
        x0, y0, x1, y1 = d.textbbox((0, 0), LETTERS[y], font=font)
        cx, cy = rng.uniform(0.4, 0.6, 2) * s
        d.text((cx - (x0 + x1) / 2, cy - (y0 + y1) / 2), LETTERS[y], fill=int(rng.integers(170, 256)), font=font)
        img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR, fillcolor=bg)
        arr = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
        out[i, 0] = np.clip(arr + rng.normal(0, 8, arr.shape), 0, 255).astype(np.uint8)
    return torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64))


def colours(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour images whose class is the hue of the object (8 names), whatever its shape, brightness and
    the grey-ish textured background: a colour task no grey source can teach."""
    import colorsys

    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    labels = np.arange(n) % len(names)
    rng.shuffle(labels)
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    for i, y in enumerate(labels):
        img = _draw(SHAPES[rng.integers(len(SHAPES))], size, rng)
        grey = np.asarray(img.convert("L").convert("RGB"), dtype=np.float32)
        base = np.asarray(img, dtype=np.float32)
        arr = 0.3 * base + 0.7 * grey  # desaturate the scene ...
        h = (COLOURS[names[y]] + rng.uniform(-8, 8)) / 360.0 % 1.0
        rgb = np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))) * 255
        r = size * rng.uniform(0.2, 0.32)
        cy, cx = rng.uniform(r, size - r, 2)
        yy, xx = np.mgrid[:size, :size]
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)[..., None]
        arr = np.where(mask, rgb, arr)  # ... and paint an object of the class's colour on it
        out[i] = np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64))
