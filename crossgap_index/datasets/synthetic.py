"""A synthetic world with a known answer: one dominant coloured shape per image, plus nuisances.

Labels are the dominant object (``"red circle"``); everything else (size, position, rotation,
background colour and texture, a small distractor, pixel noise) varies so that image-image
similarity is *not* trivially the label, and captions mention some nuisances the way web
captions do. That is the setting where intra-modal and cross-modal retrieval can disagree.
Item ``i`` depends only on ``(seed, i)``, so any prefix of a dataset is reproducible alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
_RENDER = 2 * IMAGE_SIZE  # draw at 2x, box-downsample: cheap anti-aliasing

# Canonical name first; captions use the canonical word most of the time, a synonym otherwise.
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "golden", "lemon"),
    "green": ("green", "emerald", "grass-green"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "cobalt", "royal blue"),
    "purple": ("purple", "violet"),
    "pink": ("pink", "magenta", "rose"),
}
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "block"),
    "triangle": ("triangle", "three-sided shape"),
    "star": ("star", "five-pointed star"),
    "cross": ("cross", "plus sign"),
    "heart": ("heart", "heart shape"),
}
CLASS_NAMES: list[str] = [f"{c} {s}" for c in COLOUR_SYNONYMS for s in SHAPE_SYNONYMS]

# Held-out vocabulary: the 48 colour-shape combinations split in a checkerboard over (colour, shape), so each
# half has 24 classes, every colour (3 shapes each) and every shape (4 colours each). The model knows every
# word from both halves, but no class name of one half is a class name of the other: a vocabulary stored by
# tuning on "tune" cannot name a "test" class.
VOCAB_SPLITS = ("tune", "test")
# Multi-axis relevance: what "relevant" means for the same images. "both" is the class (colour and shape).
RELEVANCE_AXES = ("shape", "colour", "both")


def vocabulary_split(part: str) -> list[str]:
    """The class names of one half of the held-out-vocabulary split ("tune" or "test"), in label order."""
    if part not in VOCAB_SPLITS:
        raise ValueError(f"unknown vocabulary split {part!r}: use {' or '.join(VOCAB_SPLITS)}")
    parity = VOCAB_SPLITS.index(part)
    return [
        f"{c} {s}" for i, c in enumerate(COLOUR_SYNONYMS) for j, s in enumerate(SHAPE_SYNONYMS) if (i + j) % 2 == parity
    ]


def axis_name(class_name: str, axis: str) -> str:
    """What an item of ``class_name`` is called when relevance is judged on ``axis`` alone."""
    colour, shape = class_name.split(" ")
    return {"shape": shape, "colour": colour, "both": class_name}[axis]


def axis_names(axis: str, classes: Sequence[str] = CLASS_NAMES) -> list[str]:
    """The distinct names on ``axis`` of ``classes``, in first-appearance order."""
    return list(dict.fromkeys(axis_name(name, axis) for name in classes))


_COLOUR_RGB = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 40),
    "green": (40, 165, 60),
    "cyan": (40, 200, 215),
    "blue": (40, 75, 220),
    "purple": (135, 50, 190),
    "pink": (245, 120, 190),
}
# Muted backgrounds whose names never collide with an object colour.
_BACKGROUND_RGB = {
    "white": (236, 236, 236),
    "light grey": (180, 180, 180),
    "dark grey": (80, 80, 80),
    "black": (25, 25, 25),
    "beige": (222, 205, 170),
    "brown": (105, 78, 52),
}
_TEXTURES = ("plain", "striped", "noisy", "gradient", "checkered")
_CAPTIONS_PER_ITEM = 5


def _unit_polygon(shape: str) -> np.ndarray:
    """(k, 2) outline with circumradius about 1, y pointing down as in image coordinates."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if shape == "cross":
        a, b = 0.3, 0.95
        return np.array(
            [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
        )
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return np.stack([x, -y + 2.5], 1) / 16.5
    raise ValueError(f"unknown shape {shape!r}")


_POLYGONS = {s: _unit_polygon(s) for s in SHAPE_SYNONYMS}


@dataclass
class SyntheticItem:
    """One image, its class and its captions (all naming the dominant object)."""

    image: Image.Image
    label: int
    class_name: str
    captions: list[str]


def _background(rng: np.random.Generator, rgb: tuple[int, int, int], texture: str) -> np.ndarray:
    """(R, R, 3) float canvas in [0, 255] carrying one of the texture nuisances."""
    base = np.array(rgb, np.float32)
    yy, xx = np.mgrid[0:_RENDER, 0:_RENDER].astype(np.float32) / _RENDER
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    shade = 40.0 if base.mean() < 128 else -40.0  # lighten dark backgrounds, darken light ones
    if texture == "striped":
        mix = (np.floor(along * rng.uniform(4, 10)) % 2)[..., None]
    elif texture == "noisy":
        coarse = rng.normal(0, 1, (16, 16)).astype(np.float32)
        up = Image.fromarray(coarse).resize((_RENDER, _RENDER), Image.Resampling.BILINEAR)
        mix = np.clip(np.asarray(up) * 0.5, -1, 1)[..., None]
    elif texture == "gradient":
        mix = ((along - along.min()) / (along.max() - along.min()))[..., None]
    elif texture == "checkered":
        cells = rng.uniform(4, 8)
        mix = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2)[..., None]
    else:
        mix = np.zeros((_RENDER, _RENDER, 1), np.float32)
    return base + shade * mix


def _draw(
    draw: ImageDraw.ImageDraw, shape: str, centre: np.ndarray, radius: float, angle: float, rgb: tuple[int, int, int]
) -> None:
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = _POLYGONS[shape] @ rot.T * radius + centre
    draw.polygon([tuple(p) for p in points], fill=rgb)


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255))


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _word(rng: np.random.Generator, synonyms: tuple[str, ...]) -> str:
    return synonyms[0] if rng.random() < 0.6 or len(synonyms) == 1 else synonyms[rng.integers(1, len(synonyms))]


def _position_phrase(centre: np.ndarray) -> str:
    row = ("top", "middle", "bottom")[min(int(centre[1] / _RENDER * 3), 2)]
    col = ("left", "centre", "right")[min(int(centre[0] / _RENDER * 3), 2)]
    if row == "middle" and col == "centre":
        return "in the centre"
    if row == "middle":
        return f"on the {col}"
    return f"in the {row} {col}" if col != "centre" else f"at the {row}"


def _captions(
    rng: np.random.Generator,
    colour: str,
    shape: str,
    size: str | None,
    position: str,
    background: str,
    texture: str,
    distractor: str | None,
) -> list[str]:
    """Several web-like captions: always the dominant colour + shape, sometimes a nuisance."""

    def obj() -> str:
        words = [_word(rng, COLOUR_SYNONYMS[colour]), _word(rng, SHAPE_SYNONYMS[shape])]
        if size and rng.random() < 0.4:
            words.insert(0, size)
        return " ".join(words)

    surface = {
        "plain": f"a plain {background} background",
        "striped": f"a striped {background} background",
        "noisy": f"a mottled {background} background",
        "gradient": f"a {background} gradient background",
        "checkered": f"a checkered {background} background",
    }[texture]
    templates = [
        lambda: f"a photo of {_article(obj())}",
        lambda: _article(obj()),
        lambda: obj(),
        lambda: f"a picture of {_article(obj())} on a {background} background",
        lambda: f"{_article(obj())} on {surface}",
        lambda: f"{_article(obj())} {position}",
        lambda: f"the {obj()} is {position}",
        lambda: f"close-up of {_article(obj())}",
        lambda: f"an illustration of {_article(obj())}, {background} background",
        lambda: f"clip art: {obj()}",
    ]
    if distractor:
        templates += [
            lambda: f"{_article(obj())} next to a small {distractor}",
            lambda: f"a tiny {distractor} beside {_article(obj())}",
        ]
    order = rng.permutation(len(templates))[:_CAPTIONS_PER_ITEM]
    return [templates[k]() for k in order]


def make_item(seed: int, index: int, classes: Sequence[str] | None = None) -> SyntheticItem:
    """Item ``index`` of the dataset ``seed``; a pure function of the two integers (and ``classes``).

    ``classes``: draw the dominant object from these class names only (a held-out-vocabulary world);
    None draws from all 48, and gives exactly the items it always has."""
    rng = np.random.default_rng([seed, index])
    if classes is None:
        label = int(rng.integers(len(CLASS_NAMES)))
    else:
        label = CLASS_NAMES.index(classes[int(rng.integers(len(classes)))])
    colour, shape = CLASS_NAMES[label].split(" ")
    background = list(_BACKGROUND_RGB)[rng.integers(len(_BACKGROUND_RGB))]
    texture = _TEXTURES[rng.integers(len(_TEXTURES))]
    canvas = Image.fromarray(np.clip(_background(rng, _BACKGROUND_RGB[background], texture), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)

    rel = rng.uniform(0.22, 0.40)
    radius = rel * _RENDER
    centre = rng.uniform(radius * 0.9, _RENDER - radius * 0.9, 2)
    distractor = None
    if rng.random() < 0.6:
        d_colour = [c for c in COLOUR_SYNONYMS if c != colour][rng.integers(len(COLOUR_SYNONYMS) - 1)]
        d_shape = [s for s in SHAPE_SYNONYMS if s != shape][rng.integers(len(SHAPE_SYNONYMS) - 1)]
        d_radius = rng.uniform(0.08, 0.12) * _RENDER
        candidates = rng.uniform(d_radius, _RENDER - d_radius, (8, 2))
        d_centre = candidates[np.argmax(np.linalg.norm(candidates - centre, axis=1))]
        _draw(draw, d_shape, d_centre, d_radius, rng.uniform(0, 2 * np.pi), _jitter(rng, _COLOUR_RGB[d_colour], 20))
        distractor = f"{d_colour} {d_shape}"
    _draw(draw, shape, centre, radius, rng.uniform(0, 2 * np.pi), _jitter(rng, _COLOUR_RGB[colour], 20))

    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    pixels = np.asarray(small, np.float32) + rng.normal(0, rng.uniform(0, 8), (IMAGE_SIZE, IMAGE_SIZE, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))

    size = "small" if rel < 0.27 else "large" if rel > 0.35 else None
    captions = _captions(rng, colour, shape, size, _position_phrase(centre), background, texture, distractor)
    return SyntheticItem(image, label, CLASS_NAMES[label], captions)


def class_prompts(template: str = "a photo of {}") -> list[str]:
    """One zero-shot prompt per class, in label order, with the article the captions use."""
    return [template.format(_article(name)) for name in CLASS_NAMES]


def generate(seed: int, n: int, classes: Sequence[str] | None = None) -> list[SyntheticItem]:
    """The first ``n`` items of dataset ``seed`` (so ``generate(s, 10)[:5] == generate(s, 5)``).

    ``classes``: only these class names occur (see ``vocabulary_split``); labels stay indices into ``CLASS_NAMES``."""
    return [make_item(seed, i, classes) for i in range(n)]


def export_folder(out_dir: str | Path, seed: int, n: int) -> Path:
    """Write a labelled image folder plus ``captions.jsonl``, the layout ``cgx`` ingests and evaluates.

    Images go to ``out_dir/<class_name>/<seed>_<i>.png`` (spaces in class names become ``_``);
    each caption is one JSON line ``{"text", "group": "<seed>_<i>", "label": "<class name>"}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "captions.jsonl", "w", encoding="utf-8") as f:
        for i, item in enumerate(generate(seed, n)):
            folder = out / item.class_name.replace(" ", "_")
            folder.mkdir(exist_ok=True)
            item.image.save(folder / f"{seed}_{i}.png")
            for text in item.captions:
                f.write(json.dumps({"text": text, "group": f"{seed}_{i}", "label": item.class_name}) + "\n")
    return out
