"""fp32 against bf16 on this machine: the roofline, embedding, OTI steps, retrieval quality, build-index.

Not a test: it measures and writes JSON (merged per section into ``--out``) and a markdown table.
fp32 and bf16 runs are interleaved round by round and every ratio is taken within one round (the
machine is shared: the load average is recorded beside each section). Runs unchanged on a GPU
(``--device cuda``), where bf16 is the same code path.

    python -m benchmarks.bench_precision                      # every section
    python -m benchmarks.bench_precision --sections embed,oti # some; results merge into the JSON
    python -m benchmarks.bench_precision --table-only         # rewrite the markdown from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import machine_info, write_json
from crossgap_index.precision import bf16_native, dtype_of

SECTIONS = ("roofline", "embed", "oti", "map", "build")
PRECISIONS = ("fp32", "bf16")
DEFAULT_OUT = Path("benchmarks/out/precision.json")
DEFAULT_TABLE = Path("benchmarks/out/precision.md")  # copied into RESULTS.md by hand


def main() -> None:
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    if not args.table_only:
        device = torch.device(args.device)
        doc["machine"] = {**machine_info(), "bf16_native": bf16_native(device), "device": str(device)}
        for section in args.sections.split(","):
            start = time.perf_counter()
            print(f"== {section}", flush=True)
            result = SECTION_FUNCTIONS[section](args, device)
            result["load_average_after"] = os.getloadavg()
            result["seconds"] = time.perf_counter() - start
            doc[section] = result
            write_json(out, doc)
            print(json.dumps(result, indent=1)[:3000], flush=True)
    Path(args.table).write_text(render(doc))
    print(f"wrote {out} and {args.table}")


# -- roofline ---------------------------------------------------------------------------------------


def matmul_gflops(dtype: torch.dtype, shape: tuple[int, int, int], device: torch.device, seconds: float = 1.5) -> float:
    """Best-of dense matmul rate for (m, k) @ (k, n); best-of because the machine is shared."""
    m, k, n = shape
    a, b = torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


def image_gflop(model_spec: str) -> float:
    """GFLOP of one ViT forward (encode_image, batch 1), counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from crossgap_index.models import load_model

    loaded = load_model(model_spec, "cpu")
    size = loaded.model.visual.image_size
    size = size if isinstance(size, tuple) else (size, size)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no FLOP formula: count its parts
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            loaded.model.encode_image(torch.zeros(1, 3, *size))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() / 1e9


def section_roofline(args, device: torch.device) -> dict:
    # ViT-B-32's MLP at batch 64 (64 * 50 tokens, 768 -> 3072) and a square 2048 matmul
    shapes = {"vit_mlp_3200x768x3072": (3200, 768, 3072), "square_2048": (2048, 2048, 2048)}
    rates = {}
    for _ in range(args.rounds):
        for name, shape in shapes.items():
            for precision in PRECISIONS:
                key = f"{name}/{precision}"
                rate = matmul_gflops(dtype_of(precision), shape, device)
                rates.setdefault(key, []).append(rate)
    best = {k: max(v) for k, v in rates.items()}
    return {
        "gflops_per_s_best": best,
        "gflops_per_s_rounds": rates,
        "image_gflop": image_gflop(args.model),
        "model": args.model,
        "threads": torch.get_num_threads(),
    }


# -- embedding ----------------------------------------------------------------------------------------


def section_embed(args, device: torch.device) -> dict:
    """images/s of Encoder.encode_pixels per precision (interleaved rounds), plus variants measured once."""
    from crossgap_index.models import Encoder, load_model

    loaded = load_model(args.model, device)
    size = loaded.model.visual.image_size
    size = size if isinstance(size, tuple) else (size, size)
    pixels = torch.randn(args.embed_batch, 3, *size, generator=torch.Generator().manual_seed(0))
    encoders = {p: Encoder(loaded, batch_size=args.embed_batch, precision=p) for p in PRECISIONS}
    feats = {p: e.encode_pixels(pixels) for p, e in encoders.items()}  # warm-up, and the agreement
    cosines = np.sum(feats["fp32"] * feats["bf16"], axis=1)
    rounds = []
    for _ in range(args.rounds):
        row = {p: len(pixels) / _timed(lambda e=e: e.encode_pixels(pixels)) for p, e in encoders.items()}
        row["autocast_bf16"] = len(pixels) / _timed(lambda: _autocast_encode(loaded, pixels, device))
        row["load"] = os.getloadavg()[0]
        rounds.append(row)
    ratios = [r["bf16"] / r["fp32"] for r in rounds]
    variants = _embed_variants(loaded, encoders["bf16"], pixels, args) if args.variants else {}
    return {
        "model": args.model,
        "batch": args.embed_batch,
        "threads": torch.get_num_threads(),
        "images_per_s_rounds": rounds,
        "bf16_over_fp32_per_round": ratios,
        "bf16_over_fp32_median": statistics.median(ratios),
        "images_per_s_best": {k: max(r[k] for r in rounds) for k in ("fp32", "bf16", "autocast_bf16")},
        "min_cosine_bf16_vs_fp32": float(cosines.min()),
        "mean_cosine_bf16_vs_fp32": float(cosines.mean()),
        "variants_bf16": variants,
    }


def _autocast_encode(loaded, pixels: torch.Tensor, device: torch.device) -> None:
    """Per-op bf16 autocast over the fp32 model: the approach the issue measured before this change."""
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        loaded.model.encode_image(pixels.to(device))


def _embed_variants(loaded, encoder, pixels: torch.Tensor, args) -> dict:
    """Measured once each, interleaved with a plain bf16 run: batch size, threads, channels-last, compile."""
    variants: dict[str, dict] = {}
    model = encoder.model
    plain = lambda: encoder.encode_pixels(pixels)  # noqa: E731
    for batch in (16, 32, 64):
        encoder.batch_size = batch
        variants[f"batch_{batch}"] = {"images_per_s": len(pixels) / _timed(plain), "load": os.getloadavg()[0]}
    encoder.batch_size = args.embed_batch
    threads = torch.get_num_threads()
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        variants[f"threads_{n}"] = {"images_per_s": len(pixels) / _timed(plain), "load": os.getloadavg()[0]}
    torch.set_num_threads(threads)
    base = len(pixels) / _timed(plain)
    model.visual.to(memory_format=torch.channels_last)
    cl_pixels = pixels.contiguous(memory_format=torch.channels_last)
    rate = len(pixels) / _timed(lambda: encoder.encode_pixels(cl_pixels))
    model.visual.to(memory_format=torch.contiguous_format)
    variants["channels_last"] = {"images_per_s": rate, "plain_same_round": base}
    if args.compile:
        original = model.encode_image
        start = time.perf_counter()
        model.encode_image = torch.compile(original)
        encoder.encode_pixels(pixels)  # compiles
        compile_s = time.perf_counter() - start
        rate = len(pixels) / _timed(plain)
        model.encode_image = original
        base = len(pixels) / _timed(plain)
        variants["torch_compile"] = {"images_per_s": rate, "plain_same_round": base, "compile_seconds": compile_s}
    return variants


# -- OTI steps ------------------------------------------------------------------------------------------


def section_oti(args, device: torch.device) -> dict:
    from crossgap_index.inversion import InversionConfig, oti
    from crossgap_index.models import load_model

    loaded = load_model(args.model, device)
    rows = []
    for batch, steps in ((1, args.oti_steps_b1), (64, args.oti_steps_b64)):
        targets = np.random.default_rng(0).standard_normal((batch, loaded.embed_dim)).astype(np.float32)
        for _ in range(args.rounds):
            row = {"batch": batch, "steps": steps, "load": os.getloadavg()[0]}
            for precision in PRECISIONS:
                config = InversionConfig(oti_steps=steps, batch_size=batch, precision=precision)
                stamps: list[float] = []
                oti(
                    loaded,
                    targets,
                    config,
                    list(range(batch)),
                    progress=lambda s, loss, stamps=stamps: stamps.append(time.perf_counter()),
                )
                step_s = np.diff(stamps)  # the first step (cache building, warm-up) is left out
                row[precision] = {
                    "ms_per_step_median": 1000 * float(np.median(step_s)),
                    "ms_per_step_min": 1000 * float(step_s.min()),
                }
            row["fp32_over_bf16_time"] = row["fp32"]["ms_per_step_median"] / row["bf16"]["ms_per_step_median"]
            rows.append(row)
    targets = np.random.default_rng(1).standard_normal((8, loaded.embed_dim)).astype(np.float32)
    final = [oti(loaded, targets, InversionConfig(oti_steps=10, precision=p), list(range(8))) for p in PRECISIONS]
    agreement = float(np.sum(final[0] * final[1], axis=1).min())
    return {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "oti_10_steps_min_cosine_bf16_vs_fp32": agreement,
    }


# -- retrieval quality ------------------------------------------------------------------------------------


def section_map(args, device: torch.device) -> dict:
    from crossgap_index.evaluation.protocol import evaluate
    from crossgap_index.inversion import InversionConfig

    runs = []
    for seed in args.map_seeds.split(","):
        spec = f"synthetic:{seed}:{args.map_n}"
        row = {"dataset": spec}
        for precision in PRECISIONS:
            config = InversionConfig(oti_steps=args.map_steps, precision=precision)
            start = time.perf_counter()
            result = evaluate(
                spec, args.map_model, device=str(device), precision=precision, config=config, tasks=["images"]
            )
            (task,) = result.tasks.values()  # image-to-image only
            modes = task.modes
            row[precision] = {
                "map_percent": {name: 100 * mode.metrics["map"] for name, mode in modes.items()},
                "seconds": time.perf_counter() - start,
                "load": os.getloadavg()[0],
            }
        row["cross_map_bf16_minus_fp32_points"] = (
            row["bf16"]["map_percent"]["cross"] - row["fp32"]["map_percent"]["cross"]
        )
        row["intra_map_bf16_minus_fp32_points"] = (
            row["bf16"]["map_percent"]["intra"] - row["fp32"]["map_percent"]["intra"]
        )
        runs.append(row)
    return {"model": args.map_model, "oti_steps": args.map_steps, "task": "images, cross = OTI", "runs": runs}


# -- build-index end to end --------------------------------------------------------------------------------


def section_build(args, device: torch.device) -> dict:
    from benchmarks.bench_build import make_folder
    from crossgap_index import CrossGapIndex

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_folder(folder, args.build_n, args.build_size)
        for round_ in range(args.build_rounds):
            row = {"load": os.getloadavg()[0]}
            for precision in PRECISIONS:
                index_dir = Path(tmp) / f"idx-{precision}-{round_}"
                with CrossGapIndex.create(index_dir, model=args.model, device=str(device), precision=precision) as idx:
                    report = idx.index_folders([folder], batch_size=args.embed_batch, workers=args.workers)
                row[precision] = {"images_per_s": report.images_per_second, "seconds": report.seconds}
            row["bf16_over_fp32"] = row["bf16"]["images_per_s"] / row["fp32"]["images_per_s"]
            rows.append(row)
    return {
        "model": args.model,
        "images": args.build_n,
        "image_size": f"{args.build_size}x{args.build_size} JPEG (noise, quality 90)",
        "decode_threads": args.workers,
        "batch": args.embed_batch,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }


SECTION_FUNCTIONS = {
    "roofline": section_roofline,
    "embed": section_embed,
    "oti": section_oti,
    "map": section_map,
    "build": section_build,
}


# -- helpers ------------------------------------------------------------------------------------------------


def _timed(fn, repeats: int = 1) -> float:
    """Seconds of the fastest of ``repeats`` calls."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def render(doc: dict) -> str:
    """The markdown table of whatever sections the JSON holds."""
    m = doc.get("machine", {})
    lines = [
        "# Precision: fp32 against bf16 (issue 11)",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')} ({m.get('torch_threads')} threads), "
        f"device {m.get('device')}, bf16 native: {m.get('bf16_native')}; "
        f"load average at start {m.get('load_average_at_start')}.",
        "Produced by `python -m benchmarks.bench_precision`; JSON in benchmarks/out/precision.json. fp32 and bf16",
        "are interleaved and ratios are taken within one round; the machine is shared: the load is beside each part.",
        "",
    ]
    if "roofline" in doc:
        r = doc["roofline"]
        best = r["gflops_per_s_best"]
        gflop = r["image_gflop"]
        lines += [
            f"## Roofline ({r['threads']} threads; {r['model']} = {gflop:.2f} GFLOP/image by FlopCounterMode)",
            "",
            "| matmul | fp32 GFLOP/s | bf16 GFLOP/s | bf16/fp32 | ceiling fp32 img/s | ceiling bf16 img/s |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("vit_mlp_3200x768x3072", "square_2048"):
            f32, b16 = best[f"{name}/fp32"], best[f"{name}/bf16"]
            lines.append(
                f"| {name} | {f32:.0f} | {b16:.0f} | {b16 / f32:.2f} | {f32 / gflop:.1f} | {b16 / gflop:.1f} |"
            )
        lines += [f"\nLoad after: {_load(r)}.", ""]
    if "embed" in doc:
        e = doc["embed"]
        ceiling = _ceiling(doc)
        lines += [
            f"## Embedding ({e['model']}, Encoder.encode_pixels, batch {e['batch']}, {e['threads']} threads)",
            "",
            "| round | fp32 img/s | bf16 img/s | bf16 autocast img/s | bf16/fp32 | load |",
            "|---|---|---|---|---|---|",
        ]
        for i, row in enumerate(e["images_per_s_rounds"], 1):
            lines.append(
                f"| {i} | {row['fp32']:.1f} | {row['bf16']:.1f} | {row['autocast_bf16']:.1f} | "
                f"{row['bf16'] / row['fp32']:.2f} | {row['load']:.1f} |"
            )
        best = e["images_per_s_best"]
        lines += [
            "",
            f"Median bf16/fp32 ratio {e['bf16_over_fp32_median']:.2f} (target >= 2). Cosine bf16 vs fp32 over "
            f"{e['batch']} images: min {e['min_cosine_bf16_vs_fp32']:.5f}, mean {e['mean_cosine_bf16_vs_fp32']:.5f} "
            "(target min >= 0.999).",
        ]
        if ceiling:
            lines.append(
                f"Share of ceiling (best round / ViT-MLP matmul roofline): fp32 {best['fp32'] / ceiling['fp32']:.2f}, "
                f"bf16 {best['bf16'] / ceiling['bf16']:.2f}."
            )
        if e.get("variants_bf16"):
            lines += ["", "bf16 variants (each measured once, same process): "]
            lines += [f"- {name}: {json.dumps(v)}" for name, v in e["variants_bf16"].items()]
        lines += [f"\nLoad after: {_load(e)}.", ""]
    if "oti" in doc:
        o = doc["oti"]
        lines += [
            f"## OTI steps ({o['model']}, fast path, {o['threads']} threads; first step left out)",
            "",
            "| batch | steps | fp32 ms/step | bf16 ms/step | fp32/bf16 | load |",
            "|---|---|---|---|---|---|",
        ]
        for row in o["rows"]:
            lines.append(
                f"| {row['batch']} | {row['steps']} | {row['fp32']['ms_per_step_median']:.1f} | "
                f"{row['bf16']['ms_per_step_median']:.1f} | {row['fp32_over_bf16_time']:.2f} | {row['load']:.1f} |"
            )
        lines += [
            "",
            f"Min cosine bf16 vs fp32 after 10 steps (8 queries): {o['oti_10_steps_min_cosine_bf16_vs_fp32']:.5f}. "
            "Target: >= 1.5x at batch 64.",
            f"\nLoad after: {_load(o)}.",
            "",
        ]
    if "map" in doc:
        q = doc["map"]
        lines += [
            f"## Retrieval quality ({q['model']}, image-to-image, OTI {q['oti_steps']} steps; mAP in %)",
            "",
            "| dataset | intra fp32 | intra bf16 | cross fp32 | cross bf16 | cross Δ (bf16−fp32) | fp32 s | bf16 s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in q["runs"]:
            f32, b16 = row["fp32"], row["bf16"]
            lines.append(
                f"| {row['dataset']} | {f32['map_percent']['intra']:.2f} | {b16['map_percent']['intra']:.2f} | "
                f"{f32['map_percent']['cross']:.2f} | {b16['map_percent']['cross']:.2f} | "
                f"{row['cross_map_bf16_minus_fp32_points']:+.2f} | {f32['seconds']:.0f} | {b16['seconds']:.0f} |"
            )
        lines += ["", "Target: within 0.3 mAP points.", f"\nLoad after: {_load(q)}.", ""]
    if "build" in doc:
        b = doc["build"]
        lines += [
            f"## build-index end to end ({b['model']}, {b['images']} images {b['image_size']}, "
            f"{b['decode_threads']} decode threads, batch {b['batch']}, {b['torch_threads']} torch threads)",
            "",
            "| round | fp32 img/s | bf16 img/s | bf16/fp32 | load |",
            "|---|---|---|---|---|",
        ]
        for i, row in enumerate(b["rows"], 1):
            lines.append(
                f"| {i} | {row['fp32']['images_per_s']:.1f} | {row['bf16']['images_per_s']:.1f} | "
                f"{row['bf16_over_fp32']:.2f} | {row['load']:.1f} |"
            )
        lines += [f"\nLoad after: {_load(b)}.", ""]
    return "\n".join(lines) + "\n"


def _ceiling(doc: dict) -> dict | None:
    if "roofline" not in doc:
        return None
    r = doc["roofline"]
    return {p: r["gflops_per_s_best"][f"vit_mlp_3200x768x3072/{p}"] / r["image_gflop"] for p in PRECISIONS}


def _load(section: dict) -> str:
    load = section.get("load_average_after")
    return ", ".join(f"{x:.1f}" for x in load) if load else "n/a"


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="ViT-B-32/random")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved fp32/bf16 rounds")
    p.add_argument("--embed-batch", type=int, default=64)
    p.add_argument("--variants", action="store_true", help="embedding: batch, threads, channels-last variants")
    p.add_argument("--compile", action="store_true", help="embedding: also torch.compile (with --variants)")
    p.add_argument("--oti-steps-b1", type=int, default=20)
    p.add_argument("--oti-steps-b64", type=int, default=6)
    p.add_argument("--map-model", default="crossgap-small")
    p.add_argument("--map-seeds", default="1001,1002")
    p.add_argument("--map-n", type=int, default=480)
    p.add_argument("--map-steps", type=int, default=25)
    p.add_argument("--build-n", type=int, default=500)
    p.add_argument("--build-size", type=int, default=320)
    p.add_argument("--build-rounds", type=int, default=1)
    p.add_argument("--workers", type=int, default=4, help="decode threads for build")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--table", default=str(DEFAULT_TABLE))
    p.add_argument("--table-only", action="store_true")
    return p.parse_args()


if __name__ == "__main__":
    main()
