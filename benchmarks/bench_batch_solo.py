"""Batched vs solo at the default precision: how many top-k lists of ``search_batch`` differ from the same
queries searched one at a time, and whether the inversion cache depends on which batch ran first.

A crossgap-small index of synthetic photos and captions; cross-mode image -> images (OTI) and
text -> texts (OVI) queries with the cache off, precision ``auto`` (bf16 where the CPU runs it natively).
Run it against two checkouts (PYTHONPATH) to compare before and after.

    python benchmarks/bench_batch_solo.py --out benchmarks/out/batch_solo.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.machine import machine_info, write_json
from crossgap_index import CrossGapIndex
from crossgap_index.datasets.synthetic import export_folder
from crossgap_index.inversion import InversionConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photos = export_folder(Path(tmp) / "photos", seed=11, n=args.images)
        captions = [json.loads(line)["text"] for line in (photos / "captions.jsonl").read_text().splitlines()]
        with CrossGapIndex.create(Path(tmp) / "index", model="crossgap-small", device=args.device) as cgx:
            cgx.index_folders([photos])
            cgx.add_texts(captions)
            inv = InversionConfig(oti_steps=args.steps, ovi_steps=args.steps)  # precision auto
            groups = {
                "images": [{"image": p} for p in sorted(photos.rglob("*.png"))[: args.images]],
                "texts": [{"text": t} for t in captions[: args.texts]],
            }
            report = {"machine": machine_info(), "precision": inv.resolved(cgx._runtime.encoder.loaded).precision}
            for target, queries in groups.items():
                common = {"target": target, "k": args.k, "mode": "cross", "inversion": inv, "use_cache": False}
                t0 = time.perf_counter()
                batched = cgx.search_batch(queries, **common)
                t1 = time.perf_counter()
                solo = [cgx.search_batch([q], **common)[0] for q in queries]
                t2 = time.perf_counter()
                mismatches = sum([h.id for h in a] != [h.id for h in b] for a, b in zip(batched, solo, strict=True))
                max_score_diff = max(
                    abs(x.score - y.score)
                    for a, b in zip(batched, solo, strict=True)
                    for x, y in zip(a, b, strict=False)
                )
                report[target] = {
                    "queries": len(queries),
                    "topk_mismatches": mismatches,
                    "max_score_diff": max_score_diff,
                    "batched_s": round(t1 - t0, 2),
                    "solo_s": round(t2 - t1, 2),
                }
                print(target, report[target], flush=True)
    if args.out:
        write_json(args.out, report)


if __name__ == "__main__":
    main()
