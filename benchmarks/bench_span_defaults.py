"""Which span settings hold across worlds: prompt x feature normalisation x components rule, label-free.

Every variant is the span over the ImageNet-1k names (no class name of the evaluated data), measured with the
engine ``cgx eval`` uses (``measure_mode``) on several synthetic seeds the model never trained on, image-to-
image and text-to-text, as the paired mAP difference against intra with its 95% interval. The variant that
wins on average and never loses much is what a bundled model stores as its default (``cgx_defaults.json``).

    python -m benchmarks.bench_span_defaults --model crossgap-small --seeds 11 12 13 14 15 --n 480
    python -m benchmarks.bench_span_defaults --model crossgap-fashion \
        --datasets fashion-mnist:train:1000 fashion-mnist:train:1000:seed=1   # the model's own training split
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_info

COMPONENTS = (4, 8, 16, 32, "d/2", "ev:0.8", "ev:0.9", "ev:0.95", "ev:0.99")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="crossgap-small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15])
    parser.add_argument("--n", type=int, default=480)
    parser.add_argument("--datasets", nargs="+", help="dataset specs instead of synthetic:SEED:N for --seeds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/span-defaults.json"))
    args = parser.parse_args(argv)

    from crossgap_index.evaluation.data import load_dataset
    from crossgap_index.evaluation.protocol import (
        IMAGES,
        TEXTS,
        FeatureSet,
        image_features,
        measure_mode,
    )
    from crossgap_index.evaluation.stats import paired_interval
    from crossgap_index.models import Encoder, load_model
    from crossgap_index.search.modes import resolve_mode
    from crossgap_index.search.run import Queries
    from crossgap_index.search.transforms import ModelTransformer

    encoder = Encoder(load_model(args.model, "cpu"), precision="fp32")
    transformer = ModelTransformer(encoder.loaded.spec.canonical, lambda: encoder)
    variants = {"intra": resolve_mode("intra")}
    for prompt, features, components in itertools.product(("raw", "photo"), ("raw", "unit"), COMPONENTS):
        settings = {"vocabulary": "imagenet", "prompt": prompt, "features": features, "components": components}
        variants[f"{prompt}/{features}/{components}"] = resolve_mode("span", projection=settings)
    rows: dict[str, dict] = {}
    begin = time.perf_counter()
    specs = args.datasets or [f"synthetic:{seed}:{args.n}" for seed in args.seeds]
    for seed in specs:
        data = load_dataset(seed)
        worlds = {IMAGES: (image_features(data, encoder, [], lambda *a: None), "image")}
        texts = data.texts
        if texts is not None:  # a dataset without captions (Fashion-MNIST) is measured image-to-image only
            queries = encoder.encode_texts(texts.query_texts)
            digests = tuple(str(i) for i in range(len(queries)))
            gallery = encoder.encode_texts(texts.gallery_texts)
            text_set = FeatureSet(
                Queries(queries, "text", digests), texts.query_groups, gallery, texts.gallery_groups, 0
            )
            worlds[TEXTS] = (text_set, "text")
        for task, (features, collection) in worlds.items():
            base = measure_mode(variants["intra"], features, transformer, collection).per_query["map"]
            for name, mode in variants.items():
                ap = measure_mode(mode, features, transformer, collection).per_query["map"]
                low, mean, high = paired_interval(ap, base)
                projection = transformer.projection(mode.legs[0], collection)
                kept = projection.settings.get("n_components") if projection is not None else None
                row = rows.setdefault(name, {"deltas": {}, "kept": kept})
                row["deltas"][f"{task}@{seed}"] = {"mean": mean, "low": low, "high": high, "map": float(np.nanmean(ap))}
        print(f"seed {seed} done ({time.perf_counter() - begin:.0f} s)", file=sys.stderr)
    summary = []
    for name, row in rows.items():
        means = [d["mean"] for d in row["deltas"].values()]
        images = [d["mean"] for k, d in row["deltas"].items() if k.startswith(IMAGES)]
        texts_ = [d["mean"] for k, d in row["deltas"].items() if k.startswith(TEXTS)] or [float("nan")]
        summary.append(
            {
                "variant": name,
                "kept": row["kept"],
                "mean_all": float(np.mean(means)),
                "worst": float(np.min(means)),
                "mean_images": float(np.mean(images)),
                "mean_texts": float(np.mean(texts_)),
            }
        )
    summary.sort(key=lambda r: -r["mean_all"])
    doc = {
        "model": args.model,
        "datasets": specs,
        "n": args.n,
        "machine": machine_info(),
        "load_average": os.getloadavg(),
        "seconds": time.perf_counter() - begin,
        "summary": summary,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print("| span variant (prompt/features/components) | kept | mean ΔmAP | worst | images | texts |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in summary:
        print(
            f"| {r['variant']} | {r['kept'] or ''} | {r['mean_all'] * 100:+.2f} | {r['worst'] * 100:+.2f} | "
            f"{r['mean_images'] * 100:+.2f} | {r['mean_texts'] * 100:+.2f} |"
        )


if __name__ == "__main__":
    main()
