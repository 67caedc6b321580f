"""fp32 against bf16 across model sizes on this CPU: the evidence for a model-aware precision ``auto`` (issue 26).

For each model, six measurements, each in both precisions, in rounds in one process: within a round each
measurement alternates fp32 and bf16 call by call (OTI: run by run) for ``--query-s`` / ``--pair-s`` seconds and at
least one call each, so both see the same load; the precision that goes first alternates by round, and every ratio
is the ratio of the two precisions' medians within one round:
  * ``image_b64`` / ``image_b1``: ``Encoder.encode_pixels`` on random pixels, a batch of 64 (halved while one fp32
    call takes longer than ``--max-call-s``: the batch used is recorded) and a single query image;
  * ``text_b64`` / ``text_b1``: ``Encoder.encode_texts`` on fixed prompts of 5-20 tokens, 64 at a time and one;
  * ``oti_b1`` / ``oti_b32`` (the batches of ``--oti-batches``): the OTI fast path, eager
    (``InversionConfig(precision=..., compile=False)``): ms per step, the median over every step of a run but each
    chunk's first (bf16 runs lanes of 8 queries one after another: a step of the batch is all its lanes' steps, as
    in bench_oti_step.py).
Torch keeps its default intra-op threads; OpenMP waits passively, as in the CLI. Per model it also records the fp32
parameter bytes of the image tower, the text tower (with and without its token-embedding table, a lookup that no
step streams whole) and the whole model, the towers' widths and depths, one image's and one text's GFLOP
(FlopCounterMode) and the fp32/bf16 probe agreement (``precision_agreement``). The markdown ends with a check of
which per-model quantity separates the models where bf16 wins from those where it loses, per measurement.

    nice -n 5 python -m benchmarks.bench_precision_models           # every model of MODELS
    python -m benchmarks.bench_precision_models --models tiny-random --rounds 1 --oti-steps 2 --out PREFIX
    python -m benchmarks.bench_precision_models --table-only         # the tables again (a "## Reading" is kept)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as crossgap_index's entry points do

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.machine import machine_info, write_json
from crossgap_index.inversion import InversionConfig, oti
from crossgap_index.models import Encoder, load_model
from crossgap_index.models.encoder import precision_agreement
from crossgap_index.models.factory import LoadedModel
from crossgap_index.precision import bf16_native

MODELS = (
    "tiny-random",
    "crossgap-small",
    "ViT-S-32/random",
    "ViT-M-32/random",
    "ViT-B-32/random",
    "RN50/random",
    "ViT-B-16/random",
)
PRECISIONS = ("fp32", "bf16")
TOWER_OF = {"image": "image", "text": "text", "oti": "text"}  # the tower each measurement runs
LLC_PATH = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
MIB = 2**20
CONFIGS = Path("benchmarks/configs/precision-sizes")  # ViT-W{width}-L{layers}-32: sizes between the bundled and ViT-S
_SUBJECTS = ("dog", "red circle", "old map of the city", "yellow flower in the rain", "bicycle", "diagram", "beach")
_FRAMES = ("a photo of a {}", "a close-up picture of a {} seen from above at dusk", "{}", "a drawing of a small {}")


def main() -> None:
    args = _parse()
    out_json = Path(f"{args.out}.json")
    if args.table_only:
        write_markdown(Path(f"{args.out}.md"), _read(out_json))
        return
    if args.configs:
        import open_clip

        open_clip.add_model_config(args.configs)  # its architectures load as NAME/random
    machine = {**machine_info(), "bf16_native": bf16_native(torch.device("cpu")), "llc_bytes": llc_bytes()}
    machine["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    doc = _read(out_json) if args.append and out_json.is_file() else {"machine": machine, "runs": [], "models": []}
    settings = {k: v for k, v in vars(args).items() if k not in ("table_only", "append")}
    run = {"settings": settings, "load_average_at_start": machine["load_average_at_start"], "models": args.models}
    doc["runs"].append(run)
    for spec in args.models:
        doc["models"] = [r for r in doc["models"] if r["model"] != spec] + [measure_model(spec, args)]
        run["load_average_at_end"] = os.getloadavg()
        write_json(out_json, doc)
        write_markdown(Path(f"{args.out}.md"), doc)
    print(render(doc))


def _read(path: Path) -> dict:
    """The results so far; a single run's document (settings beside the machine) reads as one run."""
    doc = json.loads(path.read_text())
    if "runs" not in doc:
        m = doc["machine"]
        run = {"settings": doc.pop("settings"), "load_average_at_start": m["load_average_at_start"]}
        run.update(load_average_at_end=m.pop("load_average_at_end", None), models=[r["model"] for r in doc["models"]])
        doc["runs"] = [run]
    return doc


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--rounds", type=int, default=5, help="rounds per model at most")
    p.add_argument("--min-rounds", type=int, default=3, help="rounds per model at least, whatever --model-s says")
    p.add_argument("--model-s", type=float, default=150.0, help="no new round once a model's rounds took this long")
    p.add_argument("--batch", type=int, default=64, help="the large embedding batch")
    p.add_argument("--max-call-s", type=float, default=6.0, help="halve the image batch while an fp32 call is slower")
    p.add_argument("--oti-batches", nargs=2, type=int, default=[1, 32])
    p.add_argument("--oti-steps", type=int, default=6, help="steps per OTI run; each chunk's first is not timed")
    p.add_argument("--query-s", type=float, default=0.6, help="batch-1 embedding: alternate calls this long a round")
    p.add_argument("--pair-s", type=float, default=1.0, help="batch-64 embedding, OTI runs: alternate this long")
    p.add_argument("--out", default="benchmarks/results/precision-models", help="PREFIX: writes PREFIX.json, .md")
    p.add_argument(
        "--append", action="store_true", help="add these models to PREFIX.json (a model measured again: replaced)"
    )
    p.add_argument(
        "--configs",
        default=str(CONFIGS),
        help="a folder of open_clip model configs, loadable as NAME/random (see CONFIGS)",
    )
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    if args.oti_steps < 2:
        p.error("--oti-steps must be at least 2: each chunk's first step is not timed")
    return args


def llc_bytes() -> int | None:
    """The last-level cache of CPU 0 (sysfs ``index3/size``, e.g. ``32768K``), None where sysfs does not say."""
    try:
        text = LLC_PATH.read_text().strip()
    except OSError:
        return None
    scale = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
    return int(text.rstrip("KM")) * scale


# -- one model -------------------------------------------------------------------------------------------------


def measure_model(spec: str, args: argparse.Namespace) -> dict:
    load_start = os.getloadavg()
    loaded = load_model(spec, "cpu")
    encoders = {p: Encoder(loaded, batch_size=args.batch, precision=p) for p in PRECISIONS}
    texts = prompts(args.batch)
    pixels = torch.randn(args.batch, 3, *_image_size(loaded), generator=torch.Generator().manual_seed(0))
    pixels = pixels[: _image_batch(encoders["fp32"], pixels, args.max_call_s)]
    calls = _calls(loaded, encoders, pixels, texts, args)
    for fn in calls.values():  # warm-up: first calls allocate, cast and build the inversion caches
        for p in PRECISIONS:
            fn.samples[p]()
    rounds: list[dict] = []
    start = time.perf_counter()
    while len(rounds) < args.rounds and (len(rounds) < args.min_rounds or time.perf_counter() - start < args.model_s):
        order = PRECISIONS if len(rounds) % 2 == 0 else PRECISIONS[::-1]
        row: dict = {"load": os.getloadavg()[0], "first": order[0]}
        for name, fn in calls.items():
            row[name] = fn(order)
        rounds.append(row)
        print(f"{spec} round {len(rounds)}: " + ", ".join(f"{m} {_ratio(row[m]):.2f}" for m in calls), flush=True)
    result = {
        "model": spec,
        "weights": weight_bytes(loaded),
        "towers": tower_shapes(loaded),
        "gflop": _gflop(encoders["fp32"], pixels[:1], texts),
        "probe_agreement": precision_agreement(loaded),
        "image_batch": len(pixels),
        "text_batch": len(texts),
        "oti_batches": args.oti_batches,
        "rounds": rounds,
        "summary": {m: _summary([r[m] for r in rounds]) for m in calls},
        "seconds": time.perf_counter() - start,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }
    print(json.dumps({k: result[k] for k in ("model", "weights", "towers", "summary")}, indent=1), flush=True)
    return result


def _calls(loaded: LoadedModel, encoders: dict, pixels: torch.Tensor, texts: list[str], args) -> dict:
    """measurement -> an _Alternating: both precisions' samples (seconds per call, or per OTI step), call by call."""
    b1, b32 = args.oti_batches
    image, query, text = pixels, pixels[:1], texts
    return {
        "image_b64": _Alternating(
            {p: _once(lambda e=e: e.encode_pixels(image)) for p, e in encoders.items()}, args.pair_s
        ),
        "image_b1": _Alternating(
            {p: _once(lambda e=e: e.encode_pixels(query)) for p, e in encoders.items()}, args.query_s
        ),
        "text_b64": _Alternating(
            {p: _once(lambda e=e: e.encode_texts(text)) for p, e in encoders.items()}, args.pair_s
        ),
        "text_b1": _Alternating(
            {p: _once(lambda e=e: e.encode_texts(text[:1])) for p, e in encoders.items()}, args.query_s
        ),
        f"oti_b{b1}": _Alternating(
            {p: lambda p=p: _oti_step_s(loaded, b1, p, args.oti_steps) for p in PRECISIONS}, args.pair_s
        ),
        f"oti_b{b32}": _Alternating(
            {p: lambda p=p: _oti_step_s(loaded, b32, p, args.oti_steps) for p in PRECISIONS}, args.pair_s
        ),
    }


class _Alternating:
    """One measurement in both precisions, call by call (fp32, bf16, fp32, ... in the round's order) for at least
    ``seconds`` and one call each, so both see the same load; at most 100 calls each."""

    def __init__(self, samples: dict[str, Callable[[], list[float]]], seconds: float):
        self.samples, self.seconds = samples, seconds

    def __call__(self, order: tuple[str, ...]) -> dict:
        times: dict[str, list[float]] = {p: [] for p in order}
        end = time.perf_counter() + self.seconds
        while not times[order[0]] or (time.perf_counter() < end and len(times[order[0]]) < 100):
            for p in order:
                times[p] += self.samples[p]()
        return {p: {"median_s": statistics.median(t), "min_s": min(t), "samples": len(t)} for p, t in times.items()}


def _once(fn: Callable[[], object]) -> Callable[[], list[float]]:
    def timed() -> list[float]:
        t = time.perf_counter()
        fn()
        return [time.perf_counter() - t]

    return timed


def _oti_step_s(loaded: LoadedModel, batch: int, precision: str, steps: int) -> list[float]:
    """One eager OTI run of ``batch`` queries: seconds per step of the whole batch (a step's time in each lane
    times the lanes: bf16 runs lanes of 8 queries one after another), each chunk's first step left out."""
    dim = loaded.embed_dim
    targets = np.random.default_rng(batch).standard_normal((batch, dim)).astype(np.float32)
    config = InversionConfig(oti_steps=steps, batch_size=batch, precision=precision, compile=False)
    marks: list[float] = []
    oti(loaded, targets, config, list(range(batch)), progress=lambda step, loss: marks.append(time.perf_counter()))
    chunks = len(marks) // steps  # bf16: one lane after another, each its own steps
    step_s = []
    for c in range(chunks):
        part = marks[c * steps : (c + 1) * steps]
        step_s += [b - a for a, b in zip(part, part[1:], strict=False)]
    return [t * chunks for t in step_s]


def _summary(cells: list[dict]) -> dict:
    """Median and min per precision over the rounds, and fp32/bf16 time ratios per round (>1: bf16 faster)."""
    ratios = [_ratio(c) for c in cells]
    out: dict = {
        p: {"median_s": statistics.median(c[p]["median_s"] for c in cells), "min_s": min(c[p]["min_s"] for c in cells)}
        for p in PRECISIONS
    }
    out.update(ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios), ratios=ratios)
    return out


def _ratio(cell: dict) -> float:
    return cell["fp32"]["median_s"] / cell["bf16"]["median_s"]


def _image_batch(encoder: Encoder, pixels: torch.Tensor, max_s: float) -> int:
    """The large image batch, halved while one fp32 call takes more than ``max_s`` (a round stays short)."""
    rows = len(pixels)
    while rows > 8:
        t = time.perf_counter()
        encoder.encode_pixels(pixels[:rows])
        if time.perf_counter() - t <= max_s:
            break
        rows //= 2
    return rows


def _image_size(loaded: LoadedModel) -> tuple[int, int]:
    size = loaded.model.visual.image_size
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def prompts(n: int) -> list[str]:
    """``n`` fixed prompts of varied length (5-20 tokens)."""
    return [f"{_FRAMES[i % len(_FRAMES)].format(_SUBJECTS[i % len(_SUBJECTS)])} number {i}" for i in range(n)]


# -- what a model is -------------------------------------------------------------------------------------------


def weight_bytes(loaded: LoadedModel) -> dict:
    """fp32 parameter bytes: image tower, text tower (all that is not the image tower), whole model, and the text
    tower without its token-embedding table (a lookup: a step reads a few rows of it, not all)."""
    model = loaded.model
    image = sum(p.numel() * 4 for p in model.visual.parameters())
    total = sum(p.numel() * 4 for p in model.parameters())
    table = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return {"image": image, "text": total - image, "total": total, "text_without_token_table": total - image - table}


def tower_shapes(loaded: LoadedModel) -> dict:
    """Width and depth of each tower's transformer (the image tower's width is None where it is a ResNet)."""
    model = loaded.model
    visual = getattr(model.visual, "transformer", None)
    text = getattr(model, "transformer", None)
    return {
        "image_width": getattr(visual, "width", None),
        "image_layers": len(visual.resblocks) if visual is not None else None,
        "image_kind": type(model.visual).__name__,
        "text_width": getattr(text, "width", None),
        "text_layers": len(text.resblocks) if text is not None else None,
        "embed_dim": loaded.embed_dim,
    }


def _gflop(encoder: Encoder, pixel: torch.Tensor, texts: list[str]) -> dict:
    """One image's and one text's GFLOP in fp32 (texts: the large batch's mean, padded to its longest prompt)."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no FLOP formula: count its parts
    try:
        with FlopCounterMode(display=False) as image:
            encoder.encode_pixels(pixel)
        with FlopCounterMode(display=False) as text:
            encoder.encode_texts(texts)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return {"image": image.get_total_flops() / 1e9, "text": text.get_total_flops() / 1e9 / len(texts)}


# -- markdown --------------------------------------------------------------------------------------------------


READING = "\n## Reading"  # a section written by hand after a run: kept when the tables are written again


def write_markdown(path: Path, doc: dict) -> None:
    """The tables of ``doc``, followed by the hand-written reading already in ``path``, if any."""
    old = path.read_text() if path.is_file() else ""
    path.write_text(render(doc) + (old[old.index(READING) :] if READING in old else ""))


def render(doc: dict) -> str:
    m = doc["machine"]
    llc = m.get("llc_bytes")
    lines = [
        "# fp32 against bf16 across model sizes on the CPU (issue 26: a model-aware precision `auto`)",
        "",
        f"{m['cpu']}, {m['cores']} cores, last-level cache {llc / MIB if llc else '?'} MiB, bf16 native "
        f"{m['bf16_native']}, torch {m['torch']} ({m['torch_threads']} threads), OMP_WAIT_POLICY "
        f"{m['omp_wait_policy']}.",
        "",
    ]
    for i, run in enumerate(doc["runs"], 1):
        lines.append(
            f"Run {i}: {', '.join(run['models'])}; load average {_load(run['load_average_at_start'])} at start, "
            f"{_load(run.get('load_average_at_end'))} at end. Settings: {run['settings']}."
        )
    lines += [
        "",
        "Ratios are fp32 time / bf16 time, the median over rounds of each round's ratio (>1: bf16 faster; "
        "[min-max] over rounds). Weights are fp32 parameter MiB (text: whole text tower / without the "
        "token-embedding table). `oti` is ms per step of the batch, eager fast path; embedding is per call.",
        "",
        "| model | weights MiB image / text (no table) / total | width image / text (layers) | GFLOP image / text "
        "| probe cos | " + " | ".join(measurements(doc)) + " | rounds | load start -> end |",
        "|" + "---|" * (7 + len(measurements(doc))),
    ]
    for r in _by_size(doc):
        w, t, s = r["weights"], r["towers"], r["summary"]
        cells = [
            r["model"],
            f"{w['image'] / MIB:.1f} / {w['text'] / MIB:.1f} ({w['text_without_token_table'] / MIB:.1f}) / "
            f"{w['total'] / MIB:.1f}",
            f"{t['image_width'] or t['image_kind']} ({t['image_layers'] or '-'}) / "
            f"{t['text_width']} ({t['text_layers']})",
            f"{r['gflop']['image']:.3g} / {r['gflop']['text']:.3g}",
            f"{r['probe_agreement']:.5f}",
        ]
        cells += [f"**{s[k]['ratio_median']:.2f}** [{s[k]['ratio_min']:.2f}-{s[k]['ratio_max']:.2f}]" for k in s]
        cells += [str(len(r["rounds"])), f"{_load(r['load_average_start'])} -> {_load(r['load_average_end'])}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Medians and minima behind the ratios (ms per call / per OTI step)", ""]
    lines += ["| model | measurement | batch | fp32 median (min) | bf16 median (min) | per-round ratios |"]
    lines += ["|---|---|---|---|---|---|"]
    for r in _by_size(doc):
        for k, s in r["summary"].items():
            f, b = s["fp32"], s["bf16"]
            lines.append(
                f"| {r['model']} | {k} | {_batch(r, k)} | {1e3 * f['median_s']:.1f} ({1e3 * f['min_s']:.1f}) | "
                f"{1e3 * b['median_s']:.1f} ({1e3 * b['min_s']:.1f}) | {', '.join(f'{x:.2f}' for x in s['ratios'])} |"
            )
    lines += ["", *separation(doc)]
    return "\n".join(lines) + "\n"


def _by_size(doc: dict) -> list[dict]:
    return sorted(doc["models"], key=lambda r: r["weights"]["total"])


def separation(doc: dict) -> list[str]:
    """Per measurement and candidate quantity: does one threshold split the models where bf16 won every round from
    those where it lost every round? Gives the largest loser's and the smallest winner's value (the gap)."""
    llc = doc["machine"].get("llc_bytes")
    lines = [
        "## Which quantity separates bf16's wins from its losses",
        "",
        "Two readings. *Every round*: a model wins where bf16 was faster in every round, loses where it was slower "
        "in every round, and is mixed otherwise (left out of the split). *Median*: a model wins where the median "
        "ratio is above 1, else loses. A quantity separates a measurement when every loser lies below every winner. "
        "Each quantity's cell: separates yes/no (largest loser, smallest winner); tower: the tower the measurement "
        "runs; a model without a value (a ResNet's width) is left out of that column.",
    ]
    readings = {
        "every round": (lambda s: s["ratio_min"] > 1, lambda s: s["ratio_max"] < 1),
        "median": (lambda s: s["ratio_median"] > 1, lambda s: s["ratio_median"] <= 1),
    }
    for reading, (won, lost) in readings.items():
        lines += ["", f"### {reading}", ""]
        lines += ["| measurement | wins | losses | mixed | " + " | ".join(QUANTITIES) + " |"]
        lines += ["|" + "---|" * (4 + len(QUANTITIES))]
        for k in measurements(doc):
            models = _by_size(doc)
            wins = [r for r in models if won(r["summary"][k])]
            losses = [r for r in models if lost(r["summary"][k])]
            mixed = [r for r in models if r not in wins and r not in losses]
            cells = [k] + [", ".join(_short(r["model"]) for r in group) or "-" for group in (wins, losses, mixed)]
            for value in _quantities(TOWER_OF[k.split("_")[0]]):
                lo = max((v for v in map(value, losses) if v is not None), default=None)
                hi = min((v for v in map(value, wins) if v is not None), default=None)
                splits = "yes" if lo is None or hi is None or lo < hi else "no"
                cells.append(f"{splits} ({_fmt(lo)}, {_fmt(hi)})")
            lines.append("| " + " | ".join(cells) + " |")
    if llc:
        lines += ["", f"Last-level cache: {llc / MIB:.0f} MiB (the proposed threshold on total fp32 weight bytes)."]
    return lines


QUANTITIES = ("total MiB", "tower MiB", "tower MiB without token table", "tower width", "tower GFLOP per row")


def _quantities(tower: str) -> list[Callable[[dict], float | None]]:
    """The values of QUANTITIES for the tower a measurement runs."""
    table = "text_without_token_table" if tower == "text" else "image"
    return [
        lambda r: r["weights"]["total"] / MIB,
        lambda r: r["weights"][tower] / MIB,
        lambda r: r["weights"][table] / MIB,
        lambda r: r["towers"][f"{tower}_width"],
        lambda r: r["gflop"][tower],
    ]


def measurements(doc: dict) -> list[str]:
    """The measurements every model of ``doc`` has, in the order they ran (``oti_bN``: N from ``--oti-batches``)."""
    names = [k for k in doc["models"][0]["summary"]] if doc["models"] else []
    return [k for k in names if all(k in r["summary"] for r in doc["models"])]


def _batch(r: dict, measurement: str) -> int:
    kind, size = measurement.split("_b")
    if kind == "oti" or size == "1":
        return int(size)
    return {"image": r["image_batch"], "text": r["text_batch"]}[kind]


def _short(model: str) -> str:
    return model.removesuffix("/random")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _load(load) -> str:
    return "?" if load is None else "/".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    main()
