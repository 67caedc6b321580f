"""Recall of cross (OTI) queries on approximate FAISS indexes, with and without the exact re-rank.

An OTI feature lives in the text space but is searched against an index trained on image vectors:
an out-of-distribution query. This measures recall@k against exact search (numpy over the stored
vectors), for plain image queries and for inverted ones, per index type and search setting.
Not a test: writes JSON + a table.

    python -m benchmarks.bench_cross_recall --out benchmarks/out/cross_recall.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.machine import machine_info, write_json
from crossgap_index import CrossGapIndex
from crossgap_index.datasets.synthetic import export_folder, make_item
from crossgap_index.inversion import InversionConfig, oti
from crossgap_index.inversion.keys import seed_from_digest
from crossgap_index.search.ranking import top_k
from crossgap_index.store.directory import Store
from crossgap_index.store.vectors import VectorIndex

SETTINGS = {
    "IVF128,Flat": ["nprobe=4", "nprobe=32"],
    "IVF128,PQ16": ["nprobe=4", "nprobe=32"],
    "HNSW32": ["efSearch=16", "efSearch=128"],
}


def embed_and_invert(path: Path, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Build the exact gallery index, embed held-out query images, invert them with OTI."""
    folder = export_folder(path / "gallery", args.seed, args.gallery)
    with CrossGapIndex.create(path / "index", model=args.model, device="cpu", factory="Flat") as index:
        index.index_folders([folder])
        queries = [index.embed_query(image=make_item(args.seed, args.gallery + i).image) for i in range(args.queries)]
        features = np.stack([q.feature for q in queries])
        seeds = [seed_from_digest(q.digest) for q in queries]
        inverted = oti(index._runtime.encoder.loaded, features, InversionConfig(oti_steps=args.steps), seeds)
    return {"intra": features, "cross": inverted}


def measure(store: Store, factory: str, params: str, queries: dict[str, np.ndarray], k: int) -> dict:
    ids, vectors = store.ids_and_vectors("image")
    index = VectorIndex(store.manifest.dim, factory)
    index.build(ids, vectors)
    index.search_params = params
    store.indexes["image"] = index
    row = {"factory": factory, "search_params": params}
    for kind, feats in queries.items():
        truth = [ids[np.argsort(-(vectors @ q), kind="stable")[:k]] for q in feats]
        start = time.perf_counter()
        raw = [index.search(q[None, :], k)[1][0] for q in feats]
        raw_ms = (time.perf_counter() - start) * 1000 / len(feats)
        start = time.perf_counter()
        reranked = [top_k(store, "image", q, k).ids for q in feats]
        rerank_ms = (time.perf_counter() - start) * 1000 / len(feats)
        row[kind] = {
            "recall_raw": _recall(raw, truth),
            "recall_reranked": _recall(reranked, truth),
            "ms_per_query_raw": raw_ms,
            "ms_per_query_reranked": rerank_ms,
        }
    return row


def _recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/out/cross_recall.json")
    parser.add_argument("--model", default="crossgap-small")
    parser.add_argument("--gallery", type=int, default=8000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--steps", type=int, default=150, help="OTI steps for the cross queries")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=3001)
    args = parser.parse_args()

    results = {"machine": machine_info(), "settings": vars(args), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        queries = embed_and_invert(Path(tmp), args)
        results["prepare_seconds"] = time.perf_counter() - start
        store = Store.open(Path(tmp) / "index")
        for factory, params_list in SETTINGS.items():
            for params in params_list:
                results["rows"].append(measure(store, factory, params, queries, args.k))
        store.close()
    write_json(args.out, results)

    console = Console(width=200)
    m = results["machine"]
    console.print(
        f"machine: {m['cpu']}, {m['cores']} cores, faiss {m['faiss']}; model {args.model}; "
        f"gallery {args.gallery} synthetic images (seed {args.seed}), {args.queries} held-out queries, "
        f"OTI {args.steps} steps; recall@{args.k} against exact search"
    )
    table = Table(title="recall of plain (intra) and inverted (cross) queries")
    for col in (
        "factory",
        "params",
        "intra raw",
        "intra re-ranked",
        "cross raw",
        "cross re-ranked",
        "cross ms/query raw",
        "re-ranked",
    ):
        table.add_column(col, justify="right")
    for r in results["rows"]:
        table.add_row(
            r["factory"],
            r["search_params"],
            f"{r['intra']['recall_raw']:.3f}",
            f"{r['intra']['recall_reranked']:.3f}",
            f"{r['cross']['recall_raw']:.3f}",
            f"{r['cross']['recall_reranked']:.3f}",
            f"{r['cross']['ms_per_query_raw']:.2f}",
            f"{r['cross']['ms_per_query_reranked']:.2f}",
        )
    console.print(table)
    console.print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
