"""Train ``crossgap-small``: a small, genuinely aligned CLIP on the synthetic world, on one CPU thread.

No pretrained CLIP can be downloaded here, and a random model has no modality gap or alignment
to study, so the project trains its own. The result ships as an open_clip ``local-dir`` folder
under ``crossgap_index/models/bundled/crossgap-small`` and is measured through the same
``load_model`` + ``Encoder`` path users get.

    python benchmarks/train_small.py                                       # full run (~24 min on one thread)
    python benchmarks/train_small.py --steps 60 --n-train 2000 --out /tmp/smoke   # smoke run
    python benchmarks/train_small.py --eval-only                           # re-measure shipped weights
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from crossgap_index.datasets.synthetic import CLASS_NAMES, SyntheticItem, class_prompts, generate
from crossgap_index.models import Encoder, load_model
from crossgap_index.models._registry import bundled_dir

BUNDLED = bundled_dir("crossgap-small")
OUT = Path(__file__).resolve().parent / "out"
TRAIN_SEED, EVAL_SEED, MONITOR_SEED = 1, 2, 4  # tests/test_crossgap_small.py draws seed 3


def evaluate(spec: str, seed: int, n: int) -> dict:
    """Held-out zero-shot accuracy, Recall@1 both ways and the modality gap, via load_model + Encoder.

    Recall@1 is instance-level (the retrieved caption/image belongs to the same item) over all
    ``n`` images and their captions; the class-level variant (same class) is reported beside it
    because many items share a class and generic captions ("a red circle") fit all of them.
    """
    encoder = Encoder(load_model(spec, "cpu"), batch_size=256)
    items = generate(seed, n)
    labels = np.array([it.label for it in items])
    owner = np.repeat(np.arange(n), [len(it.captions) for it in items])
    images = encoder.encode_images([it.image for it in items])
    texts = encoder.encode_texts([c for it in items for c in it.captions])
    prompts = encoder.encode_texts(class_prompts())

    predicted = (images @ prompts.T).argmax(1)
    colour_of = np.array([name.split(" ")[0] for name in CLASS_NAMES])
    shape_of = np.array([name.split(" ")[1] for name in CLASS_NAMES])
    sim = images @ texts.T
    i2t, t2i = sim.argmax(1), sim.argmax(0)
    return {
        "model": spec,
        "heldout_seed": seed,
        "n_images": n,
        "n_captions": len(owner),
        "zero_shot_prompt": "a photo of {a|an} {class name}",
        "zero_shot_acc": float((predicted == labels).mean()),
        "zero_shot_colour_acc": float((colour_of[predicted] == colour_of[labels]).mean()),
        "zero_shot_shape_acc": float((shape_of[predicted] == shape_of[labels]).mean()),
        "chance": 1 / len(CLASS_NAMES),
        "i2t_recall@1": float((owner[i2t] == np.arange(n)).mean()),
        "t2i_recall@1": float((t2i == owner).mean()),
        "i2t_class_recall@1": float((labels[owner[i2t]] == labels).mean()),
        "t2i_class_recall@1": float((labels[t2i] == labels[owner]).mean()),
        "modality_gap": float(np.linalg.norm(images.mean(0) - texts.mean(0))),
    }


def encode_text_prefix(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` run on the first (last EOT + 1) positions only.

    Under the causal mask the padding after EOT never reaches the pooled feature, so this is the
    same function at a fraction of the 77-position cost (checked against encode_text at start).
    """
    length = int(tokens.argmax(-1).max()) + 1
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection


def _pixels(items: list[SyntheticItem]) -> torch.Tensor:
    """uint8 (n, 3, 64, 64); generated images are already at model resolution, so the eval
    preprocess (resize to 64, centre crop 64, normalise) reduces to the normalisation below."""
    return torch.from_numpy(np.stack([np.asarray(it.image) for it in items])).permute(0, 3, 1, 2).contiguous()


def _normalise(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (pixels.float() / 255 - mean) / std


@torch.no_grad()
def _quick_zero_shot(model: open_clip.CLIP, images: torch.Tensor, labels: torch.Tensor, prompts: torch.Tensor) -> float:
    model.eval()
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(encode_text_prefix(model, prompts), dim=-1)
    model.train()
    return float(((img @ txt.T).argmax(1) == labels).float().mean())


def train(args: argparse.Namespace, out: Path) -> dict:
    """Contrastive training from scratch; returns the settings and timings to record."""
    torch.manual_seed(0)
    started = time.time()
    cfg = json.loads(args.config.read_text())
    model = open_clip.CLIP(**cfg["model_cfg"])
    tokenizer = open_clip.get_tokenizer(f"local-dir:{args.config.parent}")
    mean = torch.tensor(cfg["preprocess_cfg"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["preprocess_cfg"]["std"]).view(1, 3, 1, 1)

    items = generate(TRAIN_SEED, args.n_train)
    pixels = _pixels(items)
    per_item = len(items[0].captions)
    tokens = tokenizer([c for it in items for c in it.captions])
    tokens = tokens[:, : int(tokens.argmax(-1).max()) + 1].view(len(items), per_item, -1)
    monitor = generate(MONITOR_SEED, args.monitor_n)
    monitor_pixels = _normalise(_pixels(monitor), mean, std)
    monitor_labels = torch.tensor([it.label for it in monitor])
    prompt_tokens = tokenizer(class_prompts())
    data_s = time.time() - started
    print(f"data: {len(items)} images, {tokens.shape[0] * per_item} captions in {data_s:.0f}s", flush=True)

    with torch.no_grad():
        probe = tokenizer(items[0].captions + class_prompts()[:3])
        assert torch.allclose(encode_text_prefix(model, probe), model.encode_text(probe), atol=1e-5)

    # open_clip's own rule: no weight decay on gains, biases, norms and the temperature.
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "ln" in n or "bias" in n or "logit_scale" in n]
    decay = [p for n, p in model.named_parameters() if not any(p is q for q in no_decay)]
    optimizer = torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": args.wd}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, args.warmup, args.steps))
    loss_fn = open_clip.ClipLoss()
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([it.label for it in items])
    pools = [torch.nonzero(labels == c).flatten() for c in range(len(CLASS_NAMES))]
    history = []

    model.train()
    train_started = time.time()
    for step in range(1, args.steps + 1):
        # Class-balanced batches: every class exactly per_class times, so an image's in-batch
        # negatives share its class only per_class - 1 times (random batches of 48 classes collide
        # often, and web-scale CLIP, the thing being imitated, rarely sees duplicates).
        idx = torch.cat([pool[torch.randperm(len(pool), generator=generator)[: args.per_class]] for pool in pools])
        caption = torch.randint(per_item, (len(idx),), generator=generator)  # a fresh caption each visit
        image_features = F.normalize(model.encode_image(_normalise(pixels[idx], mean, std)), dim=-1)
        text_features = F.normalize(encode_text_prefix(model, tokens[idx, caption]), dim=-1)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

        if step % args.log_every == 0 or step == args.steps:
            elapsed = time.time() - train_started
            line = {
                "step": step,
                "loss": round(loss.item(), 4),
                "logit_scale": round(float(model.logit_scale.exp()), 2),
                "lr": float(schedule.get_last_lr()[0]),
                "s_per_step": round(elapsed / step, 3),
                "eta_s": round(elapsed / step * (args.steps - step)),
            }
            if step % (args.log_every * 10) == 0 or step == args.steps:
                line["monitor_zero_shot"] = _quick_zero_shot(model, monitor_pixels, monitor_labels, prompt_tokens)
            history.append(line)
            print(json.dumps(line), flush=True)
    train_s = time.time() - train_started

    out.mkdir(parents=True, exist_ok=True)
    if args.config.resolve() != (out / "open_clip_config.json").resolve():
        shutil.copy(args.config, out / "open_clip_config.json")
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    return {
        "train_seed": TRAIN_SEED,
        "n_train_images": args.n_train,
        "captions_per_image": per_item,
        "steps": args.steps,
        "batch": args.per_class * len(CLASS_NAMES),
        "batching": "class-balanced",
        "lr": args.lr,
        "warmup": args.warmup,
        "weight_decay": args.wd,
        "optimizer": "AdamW(betas=(0.9, 0.98), eps=1e-6), linear warmup + cosine to 0",
        "loss": "open_clip.ClipLoss, learnable logit_scale clamped to <= 100",
        "augmentation": "none (fresh caption sampled per visit)",
        "params": sum(p.numel() for p in model.parameters()),
        "weights_bytes": (out / "open_clip_model.safetensors").stat().st_size,
        "data_s": round(data_s, 1),
        "train_s": round(train_s, 1),
        "machine": f"{platform.machine()} {_cpu_name()}, torch {torch.__version__}, 1 thread",
        "history": history,
    }


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        type=Path,
        default=BUNDLED / "open_clip_config.json",
        help="open_clip_config.json to train (default: the bundled crossgap-small)",
    )
    parser.add_argument("--steps", type=int, default=1300)
    parser.add_argument("--per-class", type=int, default=2, help="images per class in a batch")
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--wd", type=float, default=0.1)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--monitor-n", type=int, default=480)
    parser.add_argument("--eval-n", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=BUNDLED, help="folder for the weights (default: bundled)")
    parser.add_argument("--eval-only", action="store_true", help="measure the weights already in --out")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared: one core for training, the other for people

    started = time.time()
    out = args.out.resolve()
    report = {} if args.eval_only else {"train": train(args, out)}
    spec = "crossgap-small" if out == BUNDLED else str(out)
    report["eval"] = evaluate(spec, EVAL_SEED, args.eval_n)
    report["total_wall_s"] = round(time.time() - started, 1)
    OUT.mkdir(exist_ok=True)
    name = "crossgap-small" if out == BUNDLED else f"crossgap-small-{out.name}"
    name += "-eval.json" if args.eval_only else ".json"
    (OUT / name).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["eval"], indent=2))


if __name__ == "__main__":
    main()
