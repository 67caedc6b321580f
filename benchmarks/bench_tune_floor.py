"""How much labelled data `cgx tune` needs before its choice is more than noise: the measured floor behind
``tuning.tune.MIN_CLASSES`` and ``MIN_ITEMS_PER_CLASS``.

For each (K classes, m items per class) it draws a labelled set from a synthetic pool (seed ``--pool``),
runs tune's own selection (projections only, the minimum switched off), and records: the width of the
report half's paired 95% interval, whether the gate would store the winner, and the winner's true gain
over intra on new items of the same classes (seed ``--truth``), and on every class of it. The floor is
where the interval becomes narrower than the gains modes bring and stored winners stop losing on new items.

    python -m benchmarks.bench_tune_floor --model crossgap-small --classes 4 8 16 48 --items 4 8 16 --repeats 3
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="crossgap-small")
    parser.add_argument("--classes", type=int, nargs="+", default=[4, 8, 16, 48])
    parser.add_argument("--items", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pool", type=int, default=31)
    parser.add_argument("--truth", type=int, default=32)
    parser.add_argument("--truth-n", type=int, default=960)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/tune-floor.json"))
    args = parser.parse_args(argv)

    from crossgap_index.evaluation.data import EvalDataset, ImageSet, load_dataset
    from crossgap_index.evaluation.protocol import (
        FeatureSet,
        MemoryCache,
        image_features,
        measure_mode,
    )
    from crossgap_index.evaluation.stats import paired_interval
    from crossgap_index.models import Encoder, load_model
    from crossgap_index.search.modes import Mode, resolve_mode
    from crossgap_index.search.run import Queries
    from crossgap_index.search.transforms import ModelTransformer

    tune_module = importlib.import_module("crossgap_index.tuning.tune")  # the module, not the function

    encoder = Encoder(load_model(args.model, "cpu"), precision="fp32")
    per_class = max(args.items)
    pool = load_dataset(f"synthetic:{args.pool}:{48 * per_class * 2}")
    truth_data = load_dataset(f"synthetic:{args.truth}:{args.truth_n}")
    truth = image_features(truth_data, encoder, [], lambda *a: None)
    truth_transformer = ModelTransformer(encoder.loaded.spec.canonical, lambda: encoder, cache=MemoryCache())
    true_gain: dict[str, float] = {}

    def gain_on(mode: Mode, classes: list[int] | None) -> float:
        """The mode's mean AP gain over intra on the truth set: its items of ``classes`` (None: every class)."""
        key = json.dumps([mode.to_dict(), classes], sort_keys=True, default=list)
        if key not in true_gain:
            rows = (
                np.arange(len(truth.gallery))
                if classes is None
                else np.flatnonzero(np.isin(truth.gallery_labels, classes))
            )
            q = truth.queries
            part = FeatureSet(
                Queries(q.features[rows], q.modality, tuple(q.digests[i] for i in rows)),
                truth.gallery_labels[rows],
                truth.gallery[rows],
                truth.gallery_labels[rows],
                True,
            )
            base = measure_mode(resolve_mode("intra"), part, truth_transformer, "image").per_query["map"]
            ap = measure_mode(mode, part, truth_transformer, "image").per_query["map"]
            true_gain[key] = paired_interval(ap, base)[1]
        return true_gain[key]

    images, labels, names = pool.images.items, pool.images.labels, pool.images.class_names
    saved = (tune_module.MIN_CLASSES, tune_module.MIN_ITEMS_PER_CLASS)
    tune_module.MIN_CLASSES, tune_module.MIN_ITEMS_PER_CLASS = 2, 2  # measure below the floor too
    rows = []
    begin = time.perf_counter()
    try:
        for k in args.classes:
            for m in args.items:
                for repeat in range(args.repeats):
                    rng = np.random.default_rng(1000 * k + 10 * m + repeat)
                    chosen = sorted(rng.choice(48, k, replace=False).tolist())
                    picks = [rng.choice(np.flatnonzero(labels == c), m, replace=False) for c in chosen]
                    rows_ = np.concatenate(picks)
                    relabel = {c: i for i, c in enumerate(chosen)}
                    subset = ImageSet(
                        [images[i] for i in rows_],
                        np.array([relabel[int(labels[i])] for i in rows_], np.int64),
                        [names[c] for c in chosen],
                    )
                    data = EvalDataset(f"pool:{k}x{m}#{repeat}", "synthetic", subset, None)
                    result, _ = tune_module.tune(data, encoder, inversion=False, seed=repeat)
                    rep = result.record["report"]
                    low, high = rep["delta_map_ci95"] if result.record["candidate"] != "intra" else (np.nan, np.nan)
                    winner = Mode.from_dict(result.record["mode"])
                    rows.append(
                        {
                            "classes": k,
                            "items": m,
                            "repeat": repeat,
                            "winner": result.record["candidate"],
                            "report_delta": rep["delta_map"],
                            "ci_low": low,
                            "ci_high": high,
                            "stored": result.stored,
                            "true_gain": gain_on(winner, chosen),
                            "gain_all_classes": gain_on(winner, None),
                        }
                    )
                    print(f"K={k} m={m} #{repeat}: {rows[-1]} ({time.perf_counter() - begin:.0f} s)", file=sys.stderr)
    finally:
        tune_module.MIN_CLASSES, tune_module.MIN_ITEMS_PER_CLASS = saved
    doc = {
        "model": args.model,
        "pool_seed": args.pool,
        "truth_seed": args.truth,
        "truth_n": args.truth_n,
        "machine": machine_info(),
        "load_average": os.getloadavg(),
        "seconds": time.perf_counter() - begin,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(
        "| K classes | m items | 95% CI width (points) | winner loses on new items | stored | stored and loses "
        "| stored: mean true gain | stored: mean gain on all 48 classes |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in args.classes:
        for m in args.items:
            cell = [r for r in rows if r["classes"] == k and r["items"] == m]
            widths = [r["ci_high"] - r["ci_low"] for r in cell if not np.isnan(r["ci_low"])]
            width = f"{np.mean(widths) * 100:.1f}" if widths else "(intra won)"
            losing = sum(r["true_gain"] < 0 for r in cell)
            stored = sum(r["stored"] for r in cell)
            bad = sum(r["stored"] and r["true_gain"] < 0 for r in cell)
            kept = [r for r in cell if r["stored"]]
            true = f"{np.mean([r['true_gain'] for r in kept]) * 100:+.1f}" if kept else ""
            every = f"{np.mean([r['gain_all_classes'] for r in kept]) * 100:+.1f}" if kept else ""
            print(
                f"| {k} | {m} | {width} | {losing}/{len(cell)} | {stored}/{len(cell)} | {bad}/{len(cell)} "
                f"| {true} | {every} |"
            )


if __name__ == "__main__":
    main()
