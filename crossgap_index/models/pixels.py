"""An image tower's preprocessing as plain data, run with PIL and numpy: the torch-free query path's pixels.

open_clip builds a torchvision ``Compose`` (resize, centre crop, RGB, to-tensor, normalise). ``recipe_of``
reads one into a ``PixelRecipe`` (a list of steps with their numbers) when every step is one this module
reproduces, else None and the query keeps the torch path. ``PixelRecipe.apply`` performs the same operations
on PIL images with the same rounding (torchvision resizes a PIL image with PIL itself), so the pixels equal
torchvision's; tests/test_onnx_towers.py checks that against the torch preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

# torchvision's InterpolationMode values that PIL implements, by their .value name.
_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


@dataclass(frozen=True)
class PixelRecipe:
    """Steps as (name, numbers): ("resize", {"size": [s] or [h, w], "interpolation": "bicubic"}),
    ("center_crop", {"size": [h, w]}), ("rgb", {}), ("to_array", {}), ("normalize", {"mean": [..], "std": [..]})."""

    steps: tuple[tuple[str, dict], ...]

    def to_json(self) -> list:
        return [[name, args] for name, args in self.steps]

    @classmethod
    def from_json(cls, data: list) -> PixelRecipe:
        steps = tuple((str(name), dict(args)) for name, args in data)
        unknown = [name for name, _ in steps if name not in _APPLY]
        if unknown:
            raise ValueError(f"unknown preprocessing steps {unknown}")
        return cls(steps)

    @property
    def input_size(self) -> int | None:
        """The largest side a step resizes or crops to, as ``Encoder.input_size`` reports it."""
        sizes = [side for name, args in self.steps if name in ("resize", "center_crop") for side in args["size"]]
        return max(sizes) if sizes else None

    def apply(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, 3, H, W) float32 model input for decoded images."""
        out = []
        for image in images:
            value = image
            for name, args in self.steps:
                value = _APPLY[name](value, args)
            out.append(value)
        return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def recipe_of(preprocess) -> PixelRecipe | None:
    """The recipe of an open_clip / torchvision ``Compose``, or None when a step is one this module does not run."""
    steps = []
    for transform in getattr(preprocess, "transforms", None) or [None]:
        step = _step_of(transform)
        if step is None:
            return None
        steps.append(step)
    names = [name for name, _ in steps]
    if "to_array" not in names or names.index("to_array") != len(names) - 1 - names.count("normalize"):
        return None  # the array step must come last but for normalisation
    return PixelRecipe(tuple(steps))


def _step_of(transform) -> tuple[str, dict] | None:
    kind = type(transform).__name__
    rgb = (kind == "MaybeConvertMode" and transform.mode == "RGB") or getattr(
        transform, "__name__", ""
    ) == "_convert_to_rgb"
    if kind == "Resize" and transform.max_size is None:
        size = [transform.size] if isinstance(transform.size, int) else [int(s) for s in transform.size]
        interpolation = getattr(transform.interpolation, "value", None)
        if len(size) in (1, 2) and interpolation in _RESAMPLE:
            return "resize", {"size": size, "interpolation": interpolation}
    elif kind == "CenterCrop":
        return "center_crop", {"size": [int(s) for s in transform.size]}
    elif rgb:
        return "rgb", {}
    elif kind in ("ToTensor", "MaybeToTensor"):
        return "to_array", {}
    elif kind == "Normalize" and not transform.inplace:
        return "normalize", {"mean": [float(m) for m in transform.mean], "std": [float(s) for s in transform.std]}
    return None


def _resize(image: Image.Image, args: dict) -> Image.Image:
    """torchvision's ``resize`` of a PIL image: the short side to ``size`` (long side truncated), or (h, w)."""
    size = args["size"]
    if len(size) == 1:
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size[0], int(size[0] * long / short)
        width, height = (new_short, new_long) if image.size[0] <= image.size[1] else (new_long, new_short)
    else:
        height, width = size
    return image.resize((width, height), _RESAMPLE[args["interpolation"]])


def _center_crop(image: Image.Image, args: dict) -> Image.Image:
    """torchvision's ``center_crop``: zero padding where the image is smaller, then its rounding of the offsets."""
    crop_height, crop_width = args["size"]
    width, height = image.size
    if crop_width > width or crop_height > height:
        left, top = max(crop_width - width, 0) // 2, max(crop_height - height, 0) // 2
        padded = Image.new(image.mode, (max(width, crop_width), max(height, crop_height)))
        padded.paste(image, (left, top))
        image, (width, height) = padded, padded.size
    top = int(round((height - crop_height) / 2.0))
    left = int(round((width - crop_width) / 2.0))
    return image.crop((left, top, left + crop_width, top + crop_height))


def _to_array(image: Image.Image, args: dict) -> np.ndarray:
    """``to_tensor`` of an 8-bit image: channels first, scaled to [0, 1]."""
    if image.mode not in ("RGB", "L"):
        raise ValueError(f"images in mode {image.mode} are not read by the torch-free path")
    array = np.asarray(image, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return array.transpose(2, 0, 1).astype(np.float32) / np.float32(255)


def _normalize(array: np.ndarray, args: dict) -> np.ndarray:
    mean = np.asarray(args["mean"], np.float32)[:, None, None]
    std = np.asarray(args["std"], np.float32)[:, None, None]
    return (array - mean) / std


_APPLY = {
    "resize": _resize,
    "center_crop": _center_crop,
    "rgb": lambda image, args: image.convert("RGB"),
    "to_array": _to_array,
    "normalize": _normalize,
}
