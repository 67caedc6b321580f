"""The default near-duplicate threshold (search/duplicates.py), measured: on the bundled synthetic world with
crossgap-small, planted copies of photos (resized to 60%, re-encoded as JPEG quality 75, 3% cropped off each side)
against every pair of distinct photos. Writes benchmarks/results/duplicates.{json,md}.

    python -m benchmarks.bench_duplicates                      # 3 seeds x 300 photos, 40 planted groups each
    python -m benchmarks.bench_duplicates --seeds 11 --n 100   # quick look
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_info, write_json
from crossgap_index import CrossGapIndex
from crossgap_index.datasets.near_duplicates import VARIANTS, plant_near_duplicates
from crossgap_index.datasets.synthetic import export_folder
from crossgap_index.search.duplicates import DEFAULT_THRESHOLD

MODEL = "crossgap-small"
OUT = Path(__file__).resolve().parent / "results"


def measure(seed: int, n: int, planted: int, root: Path) -> dict:
    photos = export_folder(root / f"world-{seed}", seed=seed, n=n)
    sources = sorted(photos.rglob("*.png"))[:: max(1, n // planted)][:planted]
    groups = plant_near_duplicates(sources, root / f"planted-{seed}")
    with CrossGapIndex.create(root / f"index-{seed}", model=MODEL, device="cpu") as cgx:
        cgx.index_folders([photos, root / f"planted-{seed}"])
        items = cgx.ls("image")
        ids = np.array([i.id for i in items])
        by_path = {i.path: k for k, i in enumerate(items)}
        vectors = cgx._store.catalog_vectors("image", ids)
        found = cgx.duplicates()
    sims = vectors @ vectors.T
    group_of = np.full(len(ids), -1)
    for g, group in enumerate(groups):
        for path in group:
            group_of[by_path[str(path.resolve())]] = g
    same = (group_of[:, None] == group_of[None, :]) & (group_of[:, None] >= 0)
    upper = np.triu(np.ones_like(same), k=1).astype(bool)
    variant = {}
    for v, name in enumerate(VARIANTS, 1):
        rows = [by_path[str(group[0].resolve())] for group in groups]
        cols = [by_path[str(group[v].resolve())] for group in groups]
        variant[name] = sims[rows, cols]
    true_pairs, false_pairs = sims[same & upper], sims[~same & upper]
    planted_sets = {frozenset(by_path[str(p.resolve())] for p in group) for group in groups}
    found_sets = {frozenset(int(np.flatnonzero(ids == row.id)[0]) for row in group) for group in found}
    return {
        "photos": n,
        "planted_groups": len(groups),
        "images": len(ids),
        "source_to_copy_min": {name: float(v.min()) for name, v in variant.items()},
        "planted_pair_min": float(true_pairs.min()),
        "planted_pair_p1": float(np.percentile(true_pairs, 1)),
        "distinct_pair_max": float(false_pairs.max()),
        "distinct_pair_p99_9": float(np.percentile(false_pairs, 99.9)),
        "distinct_pairs_above_default": int((false_pairs > DEFAULT_THRESHOLD).sum()),
        "planted_pairs_at_or_below_default": int((true_pairs <= DEFAULT_THRESHOLD).sum()),
        "groups_found_at_default": len(found),
        "planted_groups_found_exactly": len(planted_sets & found_sets),
        "sweep": {f"{t:.3f}": _at(t, sims, same, upper, groups, by_path) for t in SWEEP},
    }


SWEEP = (0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998)


def _at(threshold: float, sims, same, upper, groups, by_path) -> dict:
    """False pairs and planted groups whose members are all linked (brute force) at ``threshold``."""
    from crossgap_index.search.duplicates import UnionFind

    linked = (sims > threshold) & upper
    joined = UnionFind()
    for a, b in zip(*np.nonzero(linked & same), strict=True):
        joined.union(int(a), int(b))
    whole = sum(len({joined.find(by_path[str(p.resolve())]) for p in group}) == 1 for group in groups)
    return {"false_pairs": int((linked & ~same).sum()), "planted_groups_whole": int(whole)}


def markdown(doc: dict) -> str:
    lines = [
        "# Near-duplicate threshold (search/duplicates.py)",
        "",
        f"Model {MODEL}, default threshold {DEFAULT_THRESHOLD}; machine: {doc['machine']['cpu']}, "
        f"load average at start {tuple(round(x, 2) for x in doc['machine']['load_average_at_start'])}.",
        "Scores are inner products of unit image vectors; a pair is a duplicate when it scores above the threshold.",
        "",
        "| seed | photos + copies | min resized | min jpeg | min cropped | min planted pair | max distinct pair "
        "| distinct above default | planted at/below default | planted groups found exactly |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, r in doc["seeds"].items():
        s = r["source_to_copy_min"]
        lines.append(
            f"| {seed} | {r['images']} | {s['resized']:.4f} | {s['jpeg']:.4f} | {s['cropped']:.4f} "
            f"| {r['planted_pair_min']:.4f} | {r['distinct_pair_max']:.4f} | {r['distinct_pairs_above_default']} "
            f"| {r['planted_pairs_at_or_below_default']} | {r['planted_groups_found_exactly']}/{r['planted_groups']} |"
        )
    lines += ["", "Sweep: false pairs (distinct photos scoring above t) / planted groups whose copies all link up", ""]
    seeds = list(doc["seeds"])
    lines.append("| t | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    lines.append("|---|" + "---|" * len(seeds))
    for t in next(iter(doc["seeds"].values()))["sweep"]:
        cells = [doc["seeds"][s]["sweep"][t] for s in seeds]
        row = " | ".join(f"{c['false_pairs']} / {c['planted_groups_whole']}" for c in cells)
        lines.append(f"| {t} | {row} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 23, 37])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--planted", type=int, default=40)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    doc = {"machine": machine_info(), "settings": {**vars(args), "out": str(args.out), "model": MODEL}, "seeds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            doc["seeds"][str(seed)] = measure(seed, args.n, args.planted, Path(tmp))
            print(doc["seeds"][str(seed)], flush=True)
    write_json(args.out / "duplicates.json", doc)
    (args.out / "duplicates.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
