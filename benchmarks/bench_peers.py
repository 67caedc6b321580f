"""The peers (aqe, dba, nnn, qbnorm, center) and compositions against intra on held-out synthetic seeds, and our
nnn side by side with the external ``nnn-retrieval`` package on the same vectors and settings (issue 17, item 2).

Quality: ``evaluate`` (what ``cgx eval synthetic:SEED:N --model crossgap-small --task images`` runs: every mode
through the engine a query is served by, leave-one-out, paired per-query differences against intra), plus a few
compositions with the OTI inversion. Independent check: ``nnn.NNNRanker`` (pip install nnn-retrieval; a
benchmark-only tool, never a dependency of the package) with the gallery as its retrieval and reference set,
k = 128, w = 0.75, on the very features our eval ranks; its rankings minus each query itself give its mAP.

    python -m benchmarks.bench_peers                              # image -> image and the nnn check
    python -m benchmarks.bench_peers --seeds 3001 --n 96          # quick look
    python -m benchmarks.bench_peers --text-to-image --sweep      # the results/peers.md run (all three tables)
    python -m benchmarks.bench_peers --tables benchmarks/out/peers.json   # the markdown of a finished run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import machine_info, write_json
from crossgap_index.evaluation.data import load_dataset
from crossgap_index.evaluation.metrics import retrieval_metrics
from crossgap_index.evaluation.protocol import IMAGES, SERVED_INVERSION, evaluate, image_features, measure_mode
from crossgap_index.models import Encoder, load_model
from crossgap_index.search.modes import resolve_mode
from crossgap_index.search.registry import MODES, peer_names
from crossgap_index.search.transforms import ModelTransformer

MODEL = "crossgap-small"
# The modes whose vocabulary comes from the evaluated data's class names; every other mode here uses no labels
# (the inverter is trained on the evaluated images without their labels).
LABEL_INFORMED = ("span", "concept")


def main() -> None:
    args = _parse()
    if args.tables:
        print(markdown(json.loads(Path(args.tables).read_text())))
        return
    torch.set_num_threads(args.threads)
    extra = {
        "cross+aqe": resolve_mode("cross+aqe", inversion=SERVED_INVERSION),
        "cross+nnn": resolve_mode("cross+nnn", inversion=SERVED_INVERSION),
        "cross+qbnorm": resolve_mode("cross+qbnorm", inversion=SERVED_INVERSION),
        "iso+nnn": resolve_mode("iso+nnn"),
    }
    doc = {
        "machine": machine_info(),
        "settings": {**vars(args), "peers": {name: dict(MODES[name].defaults) for name in peer_names()}},
        "seeds": {},
        "nnn_check": {},
    }
    encoder = Encoder(load_model(MODEL, "cpu"))
    for seed in args.seeds:
        spec = f"synthetic:{seed}:{args.n}"
        begin = time.perf_counter()
        result = evaluate(spec, MODEL, device="cpu", tasks=["images"], extra_modes=extra)
        task = result.tasks[IMAGES]
        doc["seeds"][spec] = {
            name: {
                "map": m.metrics["map"],
                "delta_map": m.map_vs_intra,
                "delta_map_se": m.map_vs_intra_se,
                "ms_per_query": m.ms_per_query,
                "label_free": name not in LABEL_INFORMED,
            }
            for name, m in task.modes.items()
        }
        print(f"{spec}: eval {time.perf_counter() - begin:.0f} s", flush=True)
        doc["nnn_check"][spec] = nnn_side_by_side(spec, encoder, args.k, args.w)
        print(f"{spec}: nnn check {doc['nnn_check'][spec]}", flush=True)
    if args.text_to_image:
        doc["text_to_image"] = {
            f"synthetic:{seed}:{args.n}": text_to_image(seed, args.n, encoder) for seed in args.seeds
        }
    if args.sweep:
        doc["sweep"] = sweep([f"synthetic:{seed}:{args.n}" for seed in args.seeds], encoder)
    doc["uptime_after"] = Path("/proc/loadavg").read_text().split()[:3]
    write_json(Path(args.out), doc)
    print(markdown(doc))


def markdown(doc: dict) -> str:
    """Every table results/peers.md shows, from the JSON this benchmark writes."""
    parts = [table(doc)]
    if doc.get("text_to_image"):
        parts.append(_t2i_table(doc["text_to_image"]))
    if doc.get("sweep"):
        parts.append("\n".join(f"| {name} | {delta * 100:+.2f} |" for name, delta in doc["sweep"].items()))
    rows = [
        f"| {spec} | {c['ours_map'] * 100:.3f} | {c['nnn_retrieval_map'] * 100:.3f} | {c['abs_diff_map'] * 100:.3f}"
        f" | {c['queries_with_equal_ap']} / {c['queries']} |"
        for spec, c in doc["nnn_check"].items()
    ]
    parts.append("\n".join(rows))
    return "\n\n".join(parts)


def _t2i_table(results: dict) -> str:
    seeds = list(results)
    lines = [
        "| mode | " + " | ".join(f"ΔmAP {s.split(':')[1]} (95% CI)" for s in seeds) + " | mean mAP | mean ΔmAP |",
        "|" + "---|" * (len(seeds) + 3),
    ]
    for mode in results[seeds[0]]:
        cells = [
            f"{results[s][mode]['delta_map'] * 100:+.1f} ± {1.96 * (results[s][mode]['delta_map_se'] or 0) * 100:.1f}"
            for s in seeds
        ]
        mean_map = np.mean([results[s][mode]["map"] for s in seeds]) * 100
        mean_delta = np.mean([results[s][mode]["delta_map"] for s in seeds]) * 100
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {mean_map:.1f} | {mean_delta:+.1f} |")
    return "\n".join(lines)


def nnn_side_by_side(spec: str, encoder: Encoder, k: int, w: float) -> dict:
    """mAP of our nnn mode and of nnn-retrieval's NNNRanker on the same features, leave-one-out alike."""
    from nnn import NNNRanker, NNNRetriever

    features = image_features(load_dataset(spec), encoder, [], lambda *a: None)
    transformer = ModelTransformer(MODEL, lambda: encoder)
    ours = measure_mode(resolve_mode("nnn", peer={"k": k, "w": w}), features, transformer, "image")
    gallery = np.ascontiguousarray(features.gallery, np.float32)
    n = len(gallery)
    begin = time.perf_counter()
    ks = min(k, n)  # the package needs k <= the bank size; ours clips to it the same way
    ranker = NNNRanker(NNNRetriever(gallery.shape[1]), gallery, gallery, alternate_ks=ks, alternate_weight=w)
    _, order = ranker.search(gallery, n)
    seconds = time.perf_counter() - begin
    scores = np.full((n, n), -np.inf)
    for row in range(n):
        ranking = [int(i) for i in order[row] if i != row]  # leave the query out, as our eval does
        scores[row, ranking] = np.arange(len(ranking), 0, -1)
    theirs = retrieval_metrics(scores, features.query_labels, features.gallery_labels, np.eye(n, dtype=bool))
    ours_ap, theirs_ap = ours.per_query["map"], theirs.per_query["map"]
    valid = ~np.isnan(ours_ap)
    return {
        "ours_map": float(np.nanmean(ours_ap)),
        "nnn_retrieval_map": float(np.nanmean(theirs_ap)),
        "abs_diff_map": float(abs(np.nanmean(ours_ap) - np.nanmean(theirs_ap))),
        "queries_with_equal_ap": int(np.isclose(ours_ap[valid], theirs_ap[valid], atol=1e-9).sum()),
        "queries": int(valid.sum()),
        "nnn_retrieval_seconds": seconds,
        "k": k,
        "w": w,
    }


IMAGENET = {"vocabulary": "imagenet"}
TEXT_TO_IMAGE = {  # label -> (mode name, projection settings, peer settings)
    "intra": ("intra", None, None),
    "aqe": ("aqe", None, None),
    "dba": ("dba", None, None),
    "nnn": ("nnn", None, None),
    "qbnorm": ("qbnorm", None, None),
    "center": ("center", None, None),
    "center-dn": ("center", None, {"lam": 0.25}),
    "span-imagenet": ("span", IMAGENET, None),
    "span-imagenet+nnn": ("span+nnn", IMAGENET, None),
    "span-imagenet+qbnorm": ("span+qbnorm", IMAGENET, None),
    "center+aqe": ("center+aqe", None, None),
}


def text_to_image(seed: int, n: int, encoder: Encoder) -> dict:
    """Text -> image on synthetic items (the NNN / QB-Norm / DN papers' direction): each item's first caption
    queries the N images, relevant = same class. The index's text collection, which is the bank of nnn and
    qbnorm and the text mean of center, holds every item's second caption (so never the query itself)."""
    from crossgap_index.datasets.synthetic import make_item
    from crossgap_index.evaluation.stats import paired_difference
    from crossgap_index.search.gallery import MatrixGallery
    from crossgap_index.search.run import Queries, run_mode

    items = [make_item(seed, i) for i in range(n)]
    labels = np.array([item.label for item in items])
    images = encoder.encode_images([item.image for item in items])
    queries = encoder.encode_texts([item.captions[0] for item in items])
    corpus = encoder.encode_texts([item.captions[1] for item in items])
    gallery = MatrixGallery({"image": (np.arange(n), images), "text": (np.arange(n, 2 * n), corpus)})
    transformer = ModelTransformer(MODEL, lambda: encoder)
    batch = Queries(queries, "text", tuple(f"q{i}" for i in range(n)))
    out, base = {}, None
    for label, (name, projection, peer) in TEXT_TO_IMAGE.items():
        mode = resolve_mode(name, projection=projection, peer=peer)
        begin = time.perf_counter()
        results = run_mode(mode, batch, "image", n, gallery, transformer)
        seconds = time.perf_counter() - begin
        scores = np.full((n, n), -np.inf)
        for row, result in enumerate(results):
            scores[row, result.ranked.ids] = np.arange(len(result.ranked.ids), 0, -1)
        ap = retrieval_metrics(scores, labels, labels).per_query["map"]
        base = ap if base is None else base
        delta, se = paired_difference(ap, base)
        out[label] = {"map": float(np.nanmean(ap)), "delta_map": delta, "delta_map_se": se, "batch_seconds": seconds}
        print(f"text->image seed {seed} {label}: {out[label]['map'] * 100:.1f} ({delta * 100:+.1f})", flush=True)
    return out


SWEEP = {
    "aqe": [{"n": n, "alpha": a} for n in (1, 2, 3, 10) for a in (1.0, 3.0)],
    "dba": [{"n": n, "alpha": a} for n in (2, 3, 10) for a in (1.0, 3.0)],
    "nnn": [{"k": k, "w": w} for k in (8, 32, 128) for w in (0.25, 0.75, 1.0)],
    "qbnorm": [{"beta": b} for b in (5.0, 10.0, 20.0, 50.0)],
    "center": [{"lam": lam} for lam in (0.25, 0.5, 1.0)],
}


def sweep(specs: list[str], encoder: Encoder) -> dict:
    """Mean mAP difference vs intra of each peer over a grid of its settings (chosen on these seeds: an upper
    bound of what tuning a peer could give here, not a held-out number)."""
    out = {}
    transformer = ModelTransformer(MODEL, lambda: encoder)
    sets = [image_features(load_dataset(spec), encoder, [], lambda *a: None) for spec in specs]
    intra = [measure_mode(resolve_mode("intra"), f, transformer, "image").means()["map"] for f in sets]
    for kind, grid in SWEEP.items():
        for settings in grid:
            mode = resolve_mode(kind, peer=settings)
            maps = [measure_mode(mode, f, transformer, "image").means()["map"] for f in sets]
            name = f"{kind}[{','.join(f'{k}={v}' for k, v in settings.items())}]"
            out[name] = float(np.mean(np.subtract(maps, intra)))
            print(f"sweep {name}: {out[name] * 100:+.2f}", flush=True)
    return out


def table(doc: dict) -> str:
    """Markdown: per mode, mAP difference vs intra per seed (paired 95% interval) and the mean, and ms/query."""
    seeds = list(doc["seeds"])
    modes = list(doc["seeds"][seeds[0]])
    head = "| mode | label-free | " + " | ".join(f"ΔmAP {s} (95% CI)" for s in seeds) + " | mean ΔmAP | ms/query |"
    lines = [head, "|" + "---|" * (len(seeds) + 4)]
    for mode in modes:
        cells = []
        for s in seeds:
            r = doc["seeds"][s][mode]
            half = 1.96 * (r["delta_map_se"] or 0.0) * 100
            cells.append(f"{r['delta_map'] * 100:+.1f} ± {half:.1f}")
        mean = np.mean([doc["seeds"][s][mode]["delta_map"] for s in seeds]) * 100
        ms = np.mean([doc["seeds"][s][mode]["ms_per_query"] for s in seeds])
        free = "yes" if doc["seeds"][seeds[0]][mode]["label_free"] else "no"
        lines.append(f"| {mode} | {free} | " + " | ".join(cells) + f" | {mean:+.1f} | {ms:.2f} |")
    return "\n".join(lines)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3001, 3002, 3003])
    parser.add_argument("--n", type=int, default=480)
    parser.add_argument("--k", type=int, default=MODES["nnn"].defaults["k"])
    parser.add_argument("--w", type=float, default=MODES["nnn"].defaults["w"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sweep", action="store_true", help="also each peer over a grid of its settings")
    parser.add_argument("--text-to-image", action="store_true", help="also caption -> image retrieval")
    parser.add_argument("--tables", metavar="JSON", help="only print the markdown tables of a finished run")
    parser.add_argument("--out", default="benchmarks/out/peers.json")
    return parser.parse_args()


if __name__ == "__main__":
    main()
