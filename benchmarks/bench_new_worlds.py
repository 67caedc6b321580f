"""`cgx eval` on the worlds the project did not fit: Fashion-MNIST's test split, held-out-vocabulary and multi-axis
synthetic worlds. Writes benchmarks/out/new-worlds.json and prints a markdown table (benchmarks/results/worlds.md).

    python -m benchmarks.bench_new_worlds [--n 480] [--fashion-n 1000] [--steps 5]

Every world is evaluated through ``crossgap_index.evaluation.protocol.evaluate``, the function behind
``cgx eval``, image-to-image only. ``--steps``: OTI/OVI steps of the cross and fused modes (few, for speed:
this is a check that the worlds run, not the tuned cross mode).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from crossgap_index.datasets.synthetic import vocabulary_split
from crossgap_index.evaluation.protocol import IMAGES, evaluate
from crossgap_index.inversion import InversionConfig

OUT = Path(__file__).resolve().parent / "out"
SEED = 2001  # a synthetic seed neither crossgap-small's training (1) nor its evaluation (2-4) used


def worlds(n: int, fashion_n: int) -> list[tuple[str, str, str, list[str] | None, str]]:
    """(name, dataset spec, model, concept vocabulary or None for the dataset's own names, what it shows)."""
    tune_names = vocabulary_split("tune")
    return [
        ("fashion-mnist test", f"fashion-mnist:test:{fashion_n}", "crossgap-fashion", None, "real photos, own names"),
        ("held-out, own names", f"synthetic:{SEED}:{n}:vocab=test", "crossgap-small", None, "labels used"),
        (
            "held-out, tune names",
            f"synthetic:{SEED}:{n}:vocab=test",
            "crossgap-small",
            tune_names,
            "no test names",
        ),
        ("relevance = shape", f"synthetic:{SEED}:{n}:relevance=shape", "crossgap-small", None, "shape names"),
        ("relevance = colour", f"synthetic:{SEED}:{n}:relevance=colour", "crossgap-small", None, "colour names"),
        ("relevance = both", f"synthetic:{SEED}:{n}:relevance=both", "crossgap-small", None, "class names"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=480)
    parser.add_argument("--fashion-n", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    config = InversionConfig(oti_steps=args.steps, ovi_steps=args.steps)
    rows, docs = [], {}
    for name, spec, model, vocab, note in worlds(args.n, args.fashion_n):
        begin = time.time()
        result = evaluate(spec, model, device="cpu", config=config, vocab=vocab, tasks=["images"])
        doc = result.to_dict()
        doc["wall_s"] = round(time.time() - begin, 1)
        doc["load_average"] = os.getloadavg()
        docs[name] = doc
        task = result.tasks[IMAGES]
        for mode, m in task.modes.items():
            se = f" ± {1.96 * m.map_vs_intra_se * 100:.1f}" if m.map_vs_intra_se is not None else ""
            rows.append(
                f"| {name} | {task.relevant} | {mode} | {m.metrics['map'] * 100:.1f} | "
                f"{m.map_vs_intra * 100:+.1f}{se} | {m.ms_per_query or 0:.2f} |"
            )
        zero = result.zero_shot
        print(
            f"{name}: {spec} on {model} ({note}), zero-shot {zero['accuracy']:.3f} (chance {zero['chance']:.3f}), "
            f"{task.n_queries} queries, {doc['wall_s']} s, load {doc['load_average'][0]:.1f}",
            flush=True,
        )
    OUT.mkdir(exist_ok=True)
    (OUT / "new-worlds.json").write_text(json.dumps(docs, indent=2))
    print("| world | relevant | mode | mAP | ΔmAP vs intra (95%) | ms/query |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
