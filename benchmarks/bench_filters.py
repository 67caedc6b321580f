"""Filtered search: the served over-fetch (search/filters.py ``filtered_top_k``) beside FAISS's ``IDSelector``
search parameters and the brute-force twin, on one exact (Flat) index of random unit vectors, for filters that
pass 50%, 5%, 0.5% and 0.05% of the items. Checks the three agree and times them side by side in one run.
Writes benchmarks/results/filters.{json,md}.

    python -m benchmarks.bench_filters                 # 50k x 256, 50 queries, k = 10
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.machine import machine_info, write_json
from crossgap_index.search.filters import brute_force_top_k, filtered_top_k
from crossgap_index.search.ranking import Ranked

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(args.dim))
    index.add_with_ids(vectors, ids)
    queries = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    doc = {"machine": machine_info(), "settings": {**vars(args), "out": str(args.out)}, "rows": []}
    for fraction in (0.5, 0.05, 0.005, 0.0005):
        allowed = np.sort(rng.choice(ids, max(1, int(args.n * fraction)), replace=False))

        def admit(_row, some, allowed=allowed):
            return np.isin(some, allowed, assume_unique=False)

        def top_k(rows, depth):
            scores, found = index.search(np.ascontiguousarray(rows), min(depth, index.ntotal))
            return [Ranked(f[f >= 0], s[f >= 0]) for f, s in zip(found, scores, strict=True)]

        timings = {}
        begin = time.perf_counter()
        over = filtered_top_k(top_k, queries, args.k, admit)
        timings["over_fetch_ms"] = (time.perf_counter() - begin) * 1e3 / args.queries
        begin = time.perf_counter()
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        scores, found = index.search(queries, args.k, params=params)
        timings["id_selector_ms"] = (time.perf_counter() - begin) * 1e3 / args.queries
        begin = time.perf_counter()
        brute = brute_force_top_k(ids, vectors, queries, args.k, admit)
        timings["brute_force_ms"] = (time.perf_counter() - begin) * 1e3 / args.queries
        selector = [f[f >= 0].tolist() for f in found]
        doc["rows"].append(
            {
                "fraction": fraction,
                "passing": int(len(allowed)),
                **{key: round(value, 3) for key, value in timings.items()},
                "over_fetch_equals_brute_force": [r.ids.tolist() for r in over] == [r.ids.tolist() for r in brute],
                "id_selector_equals_brute_force": selector == [r.ids.tolist() for r in brute],
            }
        )
        print(doc["rows"][-1], flush=True)
    write_json(args.out / "filters.json", doc)
    (args.out / "filters.md").write_text(markdown(doc))
    print(markdown(doc))


def markdown(doc: dict) -> str:
    s, m = doc["settings"], doc["machine"]
    lines = [
        "# Filtered search: over-fetch vs FAISS IDSelector vs brute force",
        "",
        f"{s['n']} random unit vectors of dim {s['dim']}, exact (IDMap2,Flat) index, {s['queries']} queries, "
        f"k = {s['k']}; ms per query, side by side in one run. Machine: {m['cpu']}, {m['cores']} cores, faiss "
        f"{m['faiss']}, load average at start {tuple(round(x, 2) for x in m['load_average_at_start'])}.",
        "",
        "| passing | over-fetch (served) | IDSelectorBatch | brute force (twin) | over-fetch = twin "
        "| selector = twin |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['passing']} ({r['fraction']:.2%}) | {r['over_fetch_ms']} | {r['id_selector_ms']} "
            f"| {r['brute_force_ms']} | {r['over_fetch_equals_brute_force']} | {r['id_selector_equals_brute_force']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
