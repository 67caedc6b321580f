"""Benchmark the store at scale: clustered synthetic d=512 vectors imported with `cgx import`, then open
time, intra query latency at batch 1 and 32, recall@10 against exact search, peak RSS, disk bytes/vector.

Not a test (nothing this size runs in CI). Each phase runs in its own process, as each `cgx` command
does, so its peak RSS is its own. The vectors: ``--clusters`` random unit centres, each row a centre
plus Gaussian noise, normalised (clustered like image embeddings; uniform random vectors make every
IVF list equally likely and are the worst case). Queries: 1,000 more rows from the same centres.

    python benchmarks/bench_scale.py --vectors 1000000 --factory auto --out benchmarks/out/scale-1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIM = 512
MODEL = "ViT-B-32/random"  # 512-d; import reads only its config, never its weights
GEN_CHUNK = 100_000


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, noise: float) -> np.ndarray:
    rows = centres[rng.integers(0, len(centres), n)] + rng.normal(0, noise, (n, centres.shape[1])).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def generate(folder: Path, n: int, clusters: int, noise: float, queries: int) -> tuple[Path, Path]:
    """``n`` float16 rows in ``folder/emb.npy`` (written a chunk at a time) and float32 queries."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(folder / "emb.npy", mode="w+", dtype=np.float16, shape=(n, DIM))
    for first in range(0, n, GEN_CHUNK):
        out[first : first + GEN_CHUNK] = clustered(rng, centres, min(GEN_CHUNK, n - first), noise)
    out.flush()
    del out
    np.save(folder / "queries.npy", clustered(np.random.default_rng(1), centres, queries, noise))
    return folder / "emb.npy", folder / "queries.npy"


def exact_top10(embeddings: Path, queries: np.ndarray) -> np.ndarray:
    """Ids (1..N, file order) of each query's exact top 10 by inner product, over the fp16-stored rows."""
    rows = np.load(embeddings, mmap_mode="r")
    best_scores = np.full((len(queries), 10), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 10), np.int64)
    for first in range(0, len(rows), GEN_CHUNK):
        chunk = np.asarray(rows[first : first + GEN_CHUNK], np.float32)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        chunk = chunk.astype(np.float16).astype(np.float32)  # what the shards hold
        scores = queries @ chunk.T
        scores = np.concatenate([best_scores, scores], axis=1)
        numbers = np.broadcast_to(np.arange(first + 1, first + len(chunk) + 1), (len(queries), len(chunk)))
        ids = np.concatenate([best_ids, numbers], axis=1)
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        best_scores = np.take_along_axis(scores, top, 1)
        best_ids = np.take_along_axis(ids, top, 1)
    return best_ids


# -- phases, each in a child process ---------------------------------------------------------
def phase_import(index: str, embeddings: str, factory: str) -> dict:
    from crossgap_index import CrossGapIndex

    build = _time_build_steps()
    start = time.perf_counter()
    report = CrossGapIndex.import_embeddings(embeddings, index, MODEL, factory=factory, progress=_progress())
    return {
        "rows": report.rows,
        "rows_seconds": report.seconds,
        "rows_per_second": report.rows_per_second,
        "index_seconds": report.index_seconds,
        "index_steps_seconds": build,
        "total_seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time(),
    }


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _progress():
    """A progress callback that logs every ~1M rows (the benchmark runs for an hour at 10M)."""
    last = [0]

    def report(done: int, total: int) -> None:
        if done - last[0] >= 1_000_000 or done == total:
            last[0] = done
            _log(f"rows {done:,}/{total:,}")

    return report


def _time_build_steps() -> dict:
    """Seconds of the FAISS build's steps (sampling the training rows, k-means, adding), filled in as they
    run and logged: wraps the store's functions in this benchmark process only."""
    from crossgap_index.store import faiss_build, vectors

    steps: dict = {"sample": 0.0, "train": 0.0, "add": 0.0}

    def timed(name: str, fn):
        def run(*args, **kwargs):
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                steps[name] += time.perf_counter() - began
                if name != "add":
                    _log(f"build: {name} {steps[name]:.1f} s")

        return run

    faiss_build.training_sample = timed("sample", faiss_build.training_sample)  # build_streamed's own name
    idmap = vectors.faiss.IndexIDMap2
    idmap.train = timed("train", idmap.train)
    add = timed("add", idmap.add_with_ids)
    added = [0]

    def add_logged(self, x, ids):
        add(self, x, ids)
        added[0] += len(x)
        if added[0] % 1_048_576 < len(x):
            _log(f"build: added {added[0]:,} in {steps['add']:.1f} s")

    idmap.add_with_ids = add_logged
    return steps


def phase_rows(index: str, embeddings: str) -> dict:
    """Only the rows half of an import (vectors into shards, rows into the catalog), no FAISS build:
    how the write path scales where building the FAISS index would not fit the session."""
    from crossgap_index.ingest.embeddings import import_source, model_dim, open_source
    from crossgap_index.store.directory import Store

    source = open_source(Path(embeddings))
    store = Store.create(Path(index), MODEL, model_dim(MODEL), "auto", vector_dtype=source.dtype)
    with store.writing():
        cpu = time.process_time()  # both threads of the import (reader and writer)
        report = import_source(store, source)
        cpu = time.process_time() - cpu
    store.close()
    return {
        "rows": report.rows,
        "rows_seconds": report.seconds,
        "rows_per_second": report.rows_per_second,
        "cpu_seconds": cpu,
        "rows_per_cpu_second": report.rows / cpu,
        "load_average_after": os.getloadavg(),
    }


def phase_open(index: str, queries: str) -> dict:
    """Open time alone, then the first query (which waits for any background verification)."""
    from crossgap_index.search.ranking import top_k
    from crossgap_index.store.directory import Store

    q = np.load(queries)
    start = time.perf_counter()
    store = Store.open(Path(index), readonly=True)
    opened = time.perf_counter() - start
    with store.reading():
        top_k(store, "image", q[0], 10)
    first = time.perf_counter() - start
    factory = store.indexes["image"].resolved_factory
    store.close()
    return {"open_seconds": opened, "open_plus_first_query_seconds": first, "factory": factory}


def phase_serve(index: str, queries: str, truth: str, batch1: int, params: str = "") -> dict:
    """``params``: FAISS search parameters in place of the store's default (e.g. ``nprobe=16``)."""
    from crossgap_index.search.ranking import top_k_batch
    from crossgap_index.store.directory import Store

    q, exact = np.load(queries), np.load(truth)
    store = Store.open(Path(index), readonly=True)
    if params:
        store.indexes["image"].index  # noqa: B018 - waits for the background load, which sets the default params
        store.indexes["image"].search_params = params
    used_params = store.indexes["image"].search_params

    def run(rows: np.ndarray) -> list:
        with store.reading():
            ranked = top_k_batch(store, "image", rows, 10)
            store.catalog.rows([int(i) for r in ranked for i in r.ids])  # what a hit shows
        return ranked

    run(q[:8])  # warm
    solo = []
    found = []
    for row in range(len(q)):
        start = time.perf_counter()
        found.append(run(q[row : row + 1])[0].ids)
        if row < int(batch1):
            solo.append(time.perf_counter() - start)
    batched = []
    for first in range(0, min(len(q), 320), 32):
        start = time.perf_counter()
        run(q[first : first + 32])
        batched.append(time.perf_counter() - start)
    recall = float(np.mean([len(np.intersect1d(f, e)) / 10 for f, e in zip(found, exact, strict=True)]))
    store.close()
    ms = lambda xs, p: float(np.percentile(xs, p) * 1000)  # noqa: E731
    return {
        "batch1_p50_ms": ms(solo, 50),
        "batch1_p95_ms": ms(solo, 95),
        "batch32_p50_ms": ms(batched, 50),
        "batch32_p95_ms": ms(batched, 95),
        "batch32_per_query_p50_ms": ms(batched, 50) / 32,
        "recall_at_10": recall,
        "queries": len(q),
        "search_params": used_params,
    }


def child(phase: str, *args: str) -> dict:
    """Run a phase in a fresh process; its result plus that process's peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = (
        f"import json, resource, sys; sys.path.insert(0, {str(REPO)!r}); from benchmarks import bench_scale as b; "
        "r = getattr(b, 'phase_' + sys.argv[1])(*sys.argv[2:]); "
        "r['peak_rss_gb'] = b.peak_rss_gb(); print(json.dumps(r))"
    )
    _log(f"phase {phase} starts")
    done = subprocess.run([sys.executable, "-c", code, phase, *args], env=env, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"phase {phase} failed (its stderr is above)")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    _log(f"phase {phase}: {json.dumps(result)}")
    return result


def peak_rss_gb() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def serve_only(args: argparse.Namespace) -> None:
    """Open and serve an index a full run left in ``--work`` again (another nprobe, a quieter machine)."""
    if args.work is None:
        raise SystemExit("--serve-only needs the --work folder of an earlier run")
    index = args.work / "idx"
    queries, truth = args.work / f"queries-{args.queries}.npy", args.work / f"truth-{args.queries}.npy"
    result: dict = {"vectors": args.vectors, "serve_only": True, "load_average_at_start": os.getloadavg()}
    result["opens"] = [child("open", str(index), str(queries)) for _ in range(args.opens)]
    result["serve"] = child("serve", str(index), str(queries), str(truth), str(args.batch1), args.search_params)
    result["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--factory", default="auto")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.04, help="per-dimension sd around a centre")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batch1", type=int, default=200, help="batch-1 queries timed (all are used for recall)")
    parser.add_argument("--opens", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and index (default: a temp dir)")
    parser.add_argument("--rows-only", action="store_true", help="only the rows half of the import (no FAISS)")
    parser.add_argument("--reuse", action="store_true", help="keep the vectors --work already holds")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "scale.json")
    parser.add_argument(
        "--serve-only",
        action="store_true",
        help="only open and serve the index --work holds (its vectors, queries and exact top-10 kept)",
    )
    parser.add_argument(
        "--search-params", default="", help="FAISS search parameters for the serve phase (default: the store's)"
    )
    args = parser.parse_args()

    if args.serve_only:
        serve_only(args)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="cgx-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"vectors": args.vectors, "dim": DIM, "factory_setting": args.factory, "clusters": args.clusters}
    result["load_average_at_start"] = os.getloadavg()
    start = time.perf_counter()
    embeddings, queries = work / "emb.npy", work / "queries.npy"
    if not (args.reuse and embeddings.exists()):
        generate(work, args.vectors, args.clusters, args.noise, args.queries)
    used = np.load(queries)[: args.queries]  # --reuse with fewer queries than were generated: the first ones
    queries = work / f"queries-{len(used)}.npy"
    np.save(queries, used)
    truth = work / f"truth-{len(used)}.npy"
    result["generate_seconds"] = time.perf_counter() - start
    index = work / "idx"
    shutil.rmtree(index, ignore_errors=True)

    def checkpoint() -> None:
        """The results so far, written after every phase: a run cut short still leaves what it measured."""
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    if args.rows_only:
        result["rows"] = child("rows", str(index), str(embeddings))
        result["disk_bytes_per_vector"] = disk_bytes(index) / args.vectors
        result["load_average_at_end"] = os.getloadavg()
        checkpoint()
        print(json.dumps(result, indent=2))
        return
    result["import"] = child("import", str(index), str(embeddings), args.factory)
    result["load_average_after_import"] = os.getloadavg()
    result["disk_bytes"] = disk_bytes(index)
    result["disk_bytes_per_vector"] = result["disk_bytes"] / args.vectors
    result["disk_bytes_by_part"] = {
        part: disk_bytes(index / part) if (index / part).is_dir() else (index / part).stat().st_size
        for part in sorted(p.name for p in index.iterdir())
    }
    checkpoint()
    result["opens"] = []
    for _ in range(args.opens):
        result["opens"].append(child("open", str(index), str(queries)))
        checkpoint()
    if not (args.reuse and truth.exists()):  # after the import: what the targets are about comes first
        began = time.perf_counter()
        np.save(truth, exact_top10(embeddings, used))
        result["exact_seconds"] = time.perf_counter() - began
        _log(f"exact top-10 of {len(used)} queries: {result['exact_seconds']:.1f} s")
    result["serve"] = child("serve", str(index), str(queries), str(truth), str(args.batch1), args.search_params)
    result["load_average_at_end"] = os.getloadavg()
    result["machine"] = {"cores": os.cpu_count(), "python": sys.version.split()[0]}
    result["bench_peak_rss_gb"] = peak_rss_gb()
    checkpoint()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
