"""A one-shot `cgx query IMAGE --mode cross --no-cache` end to end, old checkout against this one, alternated.

Each run is a fresh process, as a user's is (imports, model load, 25 OTI steps, search); the two checkouts take
turns (order swapped every round) on the same crossgap-small index of 40 synthetic photos, so the machine's load
changes hit both. Hits must be equal. ``--old``: a worktree of the commit to compare against
(``git worktree add --detach /tmp/old <commit>``).

    python benchmarks/bench_cross_query_oneshot.py --old /tmp/oticompile-old --rounds 8 \
        --out benchmarks/results/cross-query-oneshot.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

NEW = Path(__file__).resolve().parents[1]


def main() -> None:
    args = _parse()
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # the CLI sets its own, as for a user
    root = Path(args.work)
    if not (root / "index").exists():
        _build(root, env)
    photos = sorted((root / "photos").rglob("*.png"))
    out = {"load_start": os.getloadavg(), "settings": vars(args), "runs": []}
    for r in range(args.rounds):
        sides = [("old", args.old), ("new", str(NEW))]
        for side, path in sides if r % 2 == 0 else sides[::-1]:
            photo, index = str(photos[r % len(photos)]), str(root / "index")
            cmd = [sys.executable, "-m", "crossgap_index", "query", photo, "--index", index, "--mode", "cross",
                   "--device", "cpu", "-k", "5", "--json", "--no-cache"]  # fmt: skip
            start = time.perf_counter()
            # cwd: the side's own tree (``python -m`` puts the working directory first on sys.path)
            done = subprocess.run(cmd, capture_output=True, text=True, env={**env, "PYTHONPATH": path}, cwd=path)
            wall = time.perf_counter() - start
            hits = [h["id"] for h in json.loads(done.stdout)["hits"]] if done.returncode == 0 else done.stderr[-300:]
            out["runs"].append({"side": side, "round": r, "wall_s": wall, "hits": hits, "load": os.getloadavg()[0]})
            print(side, r, f"{wall:.2f} s", hits, f"load {os.getloadavg()[0]:.1f}", flush=True)
    out["load_end"] = os.getloadavg()
    pairs = [_pair(out["runs"], r) for r in range(args.rounds)]
    out["new_over_old_median"] = statistics.median(new / old for old, new in pairs)
    out["hits_equal"] = all(
        a["hits"] == b["hits"] for a in out["runs"] for b in out["runs"] if a["round"] == b["round"]
    )
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"new/old median of paired runs {out['new_over_old_median']:.3f}, hits equal {out['hits_equal']}")


def _pair(runs: list[dict], r: int) -> tuple[float, float]:
    by_side = {run["side"]: run["wall_s"] for run in runs if run["round"] == r}
    return by_side["old"], by_side["new"]


def _build(root: Path, env: dict) -> None:
    code = (
        "from crossgap_index import CrossGapIndex\n"
        "from crossgap_index.datasets.synthetic import export_folder\n"
        f"photos = export_folder({str(root / 'photos')!r}, seed=5, n=40)\n"
        f"with CrossGapIndex.create({str(root / 'index')!r}, model='crossgap-small', device='cpu') as c:\n"
        "    c.index_folders([photos])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**env, "PYTHONPATH": str(NEW)})


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="a checkout of the commit to compare against")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--work", default="/tmp/cgx-oneshot", help="where the index and photos are built (kept)")
    p.add_argument("--out", default="benchmarks/out/cross-query-oneshot.json")
    return p.parse_args()


if __name__ == "__main__":
    main()
