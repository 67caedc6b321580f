"""Which label-free mode an untuned ``--cross`` serves: chosen on development data only, reported on held-out worlds.

Candidates: every label-free mode that needs no inversion, i.e. a one-leg base (intra, span over the ImageNet-1k
names with the model's current rule, the published span d/2, iso, center, dba) alone and followed by each
post-step (aqe, nnn, qbnorm): ``MODE+POST`` costs about one more search. The inversion modes (cross, fused,
inverter, warm, cross-gallery) are left out: each costs OTI/OVI per query or a trained network, which an
untuned index does not have (benchmarks/results/worlds*.md has their numbers).

Each model is chosen on its own development worlds (crossgap-small: synthetic development seeds, image-to-image
and text-to-text; crossgap-fashion: Fashion-MNIST's train split), by one rule stated in ``choose``; then every
candidate, the chosen one included, is measured on worlds the choice never saw (held-out synthetic seeds, a
held-out vocabulary, another relevance axis; Fashion-MNIST's test split). No number here uses labels beyond the
relevance judgement of the evaluation itself: no mode sees a class name.

    nice python -m benchmarks.bench_default_choice --n 480 --fashion-n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_info

BASES = ("intra", "span-imagenet", "span-published", "iso", "center", "dba")
POSTS = ("aqe", "nnn", "qbnorm")
FLOOR = -0.005  # a default may lose at most half a point of mAP against intra on any development cell
CLOSE = 0.0005  # means within 0.05 points are a tie: the cheaper candidate wins (fewer searches, no fit)


def candidates(model: str) -> dict[str, tuple[str, dict]]:
    """name -> (mode name, projection) for every candidate: what ``cgx_defaults.json`` can store."""
    from crossgap_index.search.modes import default_cross

    current = default_cross(model)
    imagenet = dict(current.projection) if current.name == "span" else {"preset": "published"}
    bases = {
        "intra": ("intra", {}),
        "span-imagenet": ("span", imagenet),
        "span-published": ("span", {"preset": "published"}),
        "iso": ("iso", {}),
        "center": ("center", {}),
        "dba": ("dba", {}),
    }
    out = dict(bases)
    for base, (name, projection) in bases.items():
        for post in POSTS:
            label = post if base == "intra" else f"{base}+{post}"
            out[label] = (post if base == "intra" else f"{name}+{post}", projection)
    return out


def cost_rank(label: str) -> int:
    """Searches and fits a candidate needs: intra 0, a fixed map 1, a gallery fit 2, plus 1 for a post-step."""
    base, _, post = label.partition("+")
    if base in POSTS:
        base, post = "intra", base
    own = {"intra": 0, "span-imagenet": 1, "span-published": 1, "iso": 1, "center": 1, "dba": 2}[base]
    return own + (1 if post else 0)


def choose(dev: dict[str, dict[str, float]]) -> tuple[str, str]:
    """The rule: among candidates whose worst development cell (world x task) is at least ``FLOOR`` against intra,
    the highest mean over the development cells; means within ``CLOSE`` go to the cheaper one. Returns (name,
    the rule applied in words)."""
    eligible = {name: cells for name, cells in dev.items() if min(cells.values()) >= FLOOR}
    best = max(np.mean(list(c.values())) for c in eligible.values())
    close = [name for name, cells in eligible.items() if np.mean(list(cells.values())) >= best - CLOSE]
    winner = min(close, key=lambda name: (cost_rank(name), -np.mean(list(dev[name].values()))))
    rule = (
        f"{len(eligible)} of {len(dev)} candidates never lose more than {-FLOOR * 100:.1f} points on a development "
        f"cell; best mean {best * 100:+.2f}; within {CLOSE * 100:.2f} of it: {', '.join(sorted(close))}; "
        f"cheapest: {winner}"
    )
    return winner, rule


def measure(model: str, specs: list[str], encoder, modes: dict) -> dict[str, dict[str, dict]]:
    """candidate -> cell ('task@spec') -> {mean, low, high, map}: the paired difference against intra, the interval
    over classes (``evaluation.stats.class_interval``)."""
    from crossgap_index.evaluation.data import load_dataset
    from crossgap_index.evaluation.protocol import IMAGES, TEXTS, FeatureSet, MemoryCache, image_features, measure_mode
    from crossgap_index.evaluation.stats import class_interval
    from crossgap_index.search.modes import resolve_mode
    from crossgap_index.search.run import Queries
    from crossgap_index.search.transforms import ModelTransformer

    out: dict[str, dict[str, dict]] = {name: {} for name in modes}
    for spec in specs:
        begin = time.perf_counter()
        data = load_dataset(spec)
        worlds = {IMAGES: (image_features(data, encoder, [], lambda *a: None), "image")}
        if data.texts is not None:
            texts = data.texts
            queries = encoder.encode_texts(texts.query_texts)
            gallery = encoder.encode_texts(texts.gallery_texts)
            digests = tuple(f"{spec}#{i}" for i in range(len(queries)))
            text_set = FeatureSet(
                Queries(queries, "text", digests), texts.query_groups, gallery, texts.gallery_groups, False
            )
            worlds[TEXTS] = (text_set, "text")
        for task, (features, collection) in worlds.items():
            transformer = ModelTransformer(encoder.loaded.spec.canonical, lambda: encoder, cache=MemoryCache())
            base = measure_mode(resolve_mode("intra"), features, transformer, collection).per_query["map"]
            for name, (mode_name, projection) in modes.items():
                mode = resolve_mode(mode_name, projection=projection or None)
                ap = measure_mode(mode, features, transformer, collection).per_query["map"]
                low, mean, high = class_interval(ap, base, features.query_labels)
                out[name][f"{task}@{spec}"] = {
                    "mean": float(np.nanmean(ap - base)),
                    "class_mean": mean,
                    "low": low,
                    "high": high,
                    "map": float(np.nanmean(ap)),
                }
        print(f"{model} {spec}: {time.perf_counter() - begin:.0f} s", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=480, help="items per synthetic world")
    parser.add_argument("--fashion-n", type=int, default=1000, help="images per Fashion-MNIST subset")
    parser.add_argument("--dev-seeds", type=int, nargs="+", default=[11, 12])
    parser.add_argument("--held-out-seeds", type=int, nargs="+", default=[21, 22])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/default-choice.json"))
    args = parser.parse_args(argv)

    from crossgap_index.models import Encoder, load_model

    n, fn = args.n, args.fashion_n
    plan = {
        "crossgap-small": {
            "development": [f"synthetic:{s}:{n}" for s in args.dev_seeds],
            "held_out": [f"synthetic:{s}:{n}" for s in args.held_out_seeds]
            + [f"synthetic:23:{n}:vocab=test", f"synthetic:24:{n}:relevance=colour"],
        },
        "crossgap-fashion": {
            "development": [f"fashion-mnist:train:{fn}:seed=0", f"fashion-mnist:train:{fn}:seed=1"],
            "held_out": [f"fashion-mnist:test:{fn}:seed=0", f"fashion-mnist:test:{fn}:seed=1"],
        },
    }
    started = time.perf_counter()
    doc: dict = {"machine": machine_info(), "settings": {"n": n, "fashion_n": fn, "floor": FLOOR, "close": CLOSE}}
    doc["models"] = {}
    for model, worlds in plan.items():
        encoder = Encoder(load_model(model, "cpu"), precision="fp32")
        modes = candidates(model)
        dev = measure(model, worlds["development"], encoder, modes)
        chosen, rule = choose({name: {c: v["mean"] for c, v in cells.items()} for name, cells in dev.items()})
        held = measure(model, worlds["held_out"], encoder, modes)
        doc["models"][model] = {
            "worlds": worlds,
            "candidates": {name: {"mode": m, "projection": p} for name, (m, p) in modes.items()},
            "development": dev,
            "held_out": held,
            "chosen": chosen,
            "rule": rule,
        }
        print(f"{model}: chose {chosen} ({rule})", file=sys.stderr, flush=True)
    doc["seconds"] = time.perf_counter() - started
    doc["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    args.out.with_suffix(".md").write_text(markdown(doc, " ".join(sys.argv[1:])))


def markdown(doc: dict, argv: str) -> str:
    m = doc["machine"]
    lines = [
        "# The untuned default, chosen on development data and reported on held-out worlds (issue 23, item 8)",
        "",
        f"`nice python -m benchmarks.bench_default_choice {argv}` (JSON beside this file). Machine: {m['cpu']}, "
        f"{m['cores']} cores shared with other jobs, load average {m['load_average_at_start'][0]:.1f} at start, "
        f"{doc['load_average_at_end'][0]:.1f} at end; {doc['seconds']:.0f} s; CPU, fp32.",
        "",
        "ΔmAP: mean per-query AP difference against intra, in points; [interval]: 95% t-interval over per-class "
        "means (evaluation/stats.py `class_interval`; for text-to-text each caption group is a class). Rule "
        f"(`choose`): candidates whose worst development cell is >= {doc['settings']['floor'] * 100:+.1f}, then the "
        f"highest development mean, means within {doc['settings']['close'] * 100:.2f} to the cheaper. Labels: none "
        "of these modes sees a class name; the labels only judge relevance.",
        "",
    ]
    for model, rec in doc["models"].items():
        dev_cells = list(next(iter(rec["development"].values())))
        held_cells = list(next(iter(rec["held_out"].values())))
        lines += [
            f"## {model}",
            "",
            f"Development: {', '.join(rec['worlds']['development'])}. "
            f"Held out: {', '.join(rec['worlds']['held_out'])}.",
            "",
            f"**Chosen: `{rec['chosen']}`** ({rec['rule']}).",
            "",
            "| candidate | dev mean | dev worst | " + " | ".join(f"held-out {c}" for c in held_cells) + " |",
            "|---|---:|---:|" + "---:|" * len(held_cells),
        ]
        order = sorted(rec["development"], key=lambda k: -np.mean([v["mean"] for v in rec["development"][k].values()]))
        for name in order:
            dev = [rec["development"][name][c]["mean"] for c in dev_cells]
            held = [rec["held_out"][name][c] for c in held_cells]
            mark = "**" if name == rec["chosen"] else ""
            cells = " | ".join(f"{h['mean'] * 100:+.2f} [{h['low'] * 100:+.1f}, {h['high'] * 100:+.1f}]" for h in held)
            lines.append(f"| {mark}{name}{mark} | {np.mean(dev) * 100:+.2f} | {min(dev) * 100:+.2f} | {cells} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
