"""Write ``crossgap-small``'s world reference and measure the "outside its world" rule it serves.

The reference (``crossgap_index/models/bundled/crossgap-small/world.safetensors``) holds the unit
image features of the synthetic training monitor (seed 4, 480 images), through ``load_model`` +
``Encoder`` in fp32. The measurement embeds held-out synthetic images (seed 9), Fashion-MNIST test
images (Debian's dataset-fashion-mnist), crops of the real photos that matplotlib and scikit-learn
ship, and uniform noise, and reports the share of each whose nearest reference cosine is below the cut.

    python benchmarks/world_reference.py            # measure only
    python benchmarks/world_reference.py --write    # also (re)write the shipped reference
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

from benchmarks.machine import machine_info
from crossgap_index.datasets.synthetic import generate
from crossgap_index.models import Encoder, load_model
from crossgap_index.models._registry import bundled_dir
from crossgap_index.models.world import OUTSIDE_COSINE, WORLD_FILE, WORLD_KEY, outside_mask

MODEL = "crossgap-small"
REFERENCE_SEED, REFERENCE_N = 4, 480
FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
OUT = Path(__file__).resolve().parent / "out" / "world_reference.json"


def real_photo_crops(per_photo: int = 20) -> list[Image.Image]:
    """Square crops (30-100% of the short side) of the sample photos bundled with matplotlib and scikit-learn."""
    import matplotlib
    import sklearn

    photos = [
        Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
        Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
        Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
    ]
    crops = []
    for path in photos:
        image = Image.open(path).convert("RGB")
        width, height = image.size
        rng = np.random.default_rng(0)
        crops.append(image)
        for _ in range(per_photo):
            side = int(rng.uniform(0.3, 1.0) * min(width, height))
            x, y = rng.integers(0, width - side + 1), rng.integers(0, height - side + 1)
            crops.append(image.crop((x, y, x + side, y + side)))
    return crops


def fashion_mnist(n: int = 300) -> list[Image.Image]:
    with gzip.open(FASHION) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    return [Image.fromarray(p).convert("RGB") for p in pixels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the shipped reference file")
    args = parser.parse_args()
    encoder = Encoder(load_model(MODEL, "cpu"), precision="fp32")
    target = bundled_dir(MODEL) / WORLD_FILE
    if args.write:
        reference = encoder.encode_images([it.image for it in generate(REFERENCE_SEED, REFERENCE_N)])
        save_file({WORLD_KEY: reference.astype(np.float16)}, str(target))
    from crossgap_index.models.world import world_reference

    reference = world_reference(MODEL)
    sets = {
        "synthetic held-out (seed 9, 500)": [it.image for it in generate(9, 500)],
        "Fashion-MNIST test (300)": fashion_mnist(),
        "real photos + crops (3 + 60)": real_photo_crops(),
        "uniform noise (50)": [
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)) for i in range(50)
        ],
    }
    rows = {}
    for name, images in sets.items():
        vectors = encoder.encode_images(images)
        nearest = (vectors @ reference.T).max(axis=1)
        rows[name] = {
            "n": len(images),
            "outside_share": float(outside_mask(vectors, reference).mean()),
            "nearest_cosine_median": float(np.median(nearest)),
        }
        print(
            f"{name:36s} outside {rows[name]['outside_share']:.2f}  median nearest cosine "
            f"{rows[name]['nearest_cosine_median']:.3f}"
        )
    OUT.parent.mkdir(exist_ok=True)
    doc = {"machine": machine_info(), "cut": OUTSIDE_COSINE, "reference_bytes": os.path.getsize(target), "sets": rows}
    OUT.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
