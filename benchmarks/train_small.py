"""Train a small, genuinely aligned CLIP from scratch on one CPU thread: the synthetic world or any labelled set.

No pretrained CLIP can be downloaded here, and a random model has no modality gap or alignment
to study, so the project trains its own. The result is an open_clip ``local-dir`` folder
(``open_clip_config.json`` + ``open_clip_model.safetensors``) that ``--model FOLDER`` loads, measured
through the same ``load_model`` + ``Encoder`` path users get.

Synthetic world (the bundled ``crossgap-small``):
    python -m benchmarks.train_small                                       # full run (~24 min on one thread)
    python -m benchmarks.train_small --steps 60 --n-train 2000 --out /tmp/smoke   # smoke run
    python -m benchmarks.train_small --eval-only                           # re-measure shipped weights

Any labelled image set (a folder with one subfolder per class, the subfolder name being the class name
in the captions, or a dataset spec ``cgx eval`` takes), e.g. the bundled ``crossgap-fashion``:
    python -m benchmarks.train_small --dataset fashion-mnist:train --out MODEL_DIR \
        --config benchmarks/configs/crossgap-fashion.json --minutes 12 --eval-dataset fashion-mnist:test
    python -m benchmarks.train_small --folder DIR --out MODEL_DIR [--template "a photo of a {}"] [--seed S]
Each image's caption is the template filled with its class name (default: the project's zero-shot
prompt "a photo of a/an {name}", so a trained model is queried the way it was taught).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from crossgap_index.datasets.synthetic import CLASS_NAMES, SyntheticItem, class_prompts, generate
from crossgap_index.errors import CrossGapError
from crossgap_index.models import Encoder, load_model
from crossgap_index.models._registry import bundled_dir
from crossgap_index.search.vocabulary import concept_prompts

BUNDLED = bundled_dir("crossgap-small")
CONFIGS = Path(__file__).resolve().parent / "configs"
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

    optimizer = _optimizer(model, args)
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
                "logit_scale": round(model.logit_scale.exp().item(), 2),
                "lr": float(schedule.get_last_lr()[0]),
                "s_per_step": round(elapsed / step, 3),
                "eta_s": round(elapsed / step * (args.steps - step)),
            }
            if step % (args.log_every * 10) == 0 or step == args.steps:
                line["monitor_zero_shot"] = _quick_zero_shot(model, monitor_pixels, monitor_labels, prompt_tokens)
            history.append(line)
            print(json.dumps(line), flush=True)
    train_s = time.time() - train_started

    _save(model, args.config, out)
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


# --- any labelled image set ----------------------------------------------------------------------------------


def labelled_pixels(spec: str, cfg: dict) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """``(uint8 (n, 3, S, S) pixels, labels, class names, notes)`` of a folder or dataset spec.

    Each image goes through the model's own eval preprocessing (resize the shorter side, centre crop)
    up to, not including, the tensor conversion, so training sees exactly the pixels ``cgx`` feeds the
    model; kept as uint8 so 60,000 images fit in a few hundred MB. Undecodable files are skipped."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from crossgap_index.evaluation.data import load_dataset
    from crossgap_index.ingest.decode import DecodeError, decode_rgb

    data = load_dataset(spec)
    if data.images is None:
        raise CrossGapError(f"{spec} has no labelled images to train on")
    size = cfg["model_cfg"]["vision_cfg"]["image_size"]
    full = image_transform_v2(PreprocessCfg(size=size, **cfg["preprocess_cfg"]), is_train=False)
    to_size = type(full)(full.transforms[:3])  # Resize, CenterCrop, MaybeConvertMode
    arrays, labels, notes, first = [], [], list(data.notes), None
    for i in range(len(data.images.items)):
        try:
            image = decode_rgb(data.images.read(i))
        except DecodeError as exc:
            notes.append(f"skipped item {i}: {exc}")
            continue
        first = image if first is None else first
        arrays.append(np.asarray(to_size(image), np.uint8))
        labels.append(int(data.images.labels[i]))
    if len(set(labels)) < 2:
        raise CrossGapError(f"{spec}: training needs at least 2 classes with images, found {len(set(labels))}")
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    # the straightforward twin: the model's full transform on the first image equals the path used here
    mean = torch.tensor(cfg["preprocess_cfg"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["preprocess_cfg"]["std"]).view(1, 3, 1, 1)
    assert torch.allclose(_normalise(pixels[:1], mean, std)[0], full(first), atol=1e-5)
    return pixels, torch.tensor(labels), list(data.images.class_names), notes


def captions_for(class_names: list[str], template: str | None) -> list[str]:
    """One caption per class: ``template`` filled with the name, or the project's zero-shot prompt."""
    return concept_prompts(class_names) if template is None else [template.format(name) for name in class_names]


def deduplicated_clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric contrastive loss when many images share one caption (one caption per class).

    ``text_features`` are the batch's distinct captions, ``targets`` each image's caption row. Images
    to texts: cross-entropy over the distinct captions. Texts to images: each caption's log-probability
    averaged over all the images it describes. With distinct captions this is exactly ``ClipLoss``;
    ClipLoss itself would count an image's own class caption, repeated, as its negatives."""
    logits = scale * image_features @ text_features.T
    image_loss = F.cross_entropy(logits, targets)
    positive = F.one_hot(targets, len(text_features)).T.float()  # (captions, images)
    text_log_prob = logits.T.log_softmax(dim=1)
    text_loss = -((text_log_prob * positive).sum(1) / positive.sum(1)).mean()
    return (image_loss + text_loss) / 2


def train_labelled(args: argparse.Namespace, out: Path) -> dict:
    """Contrastive training from scratch on a labelled image set; returns the settings and timings to record.

    Batches are class-balanced (``--per-class`` images of each class, cycling through a shuffled order of
    each class so every image is seen before any repeats). With ``--minutes`` the cosine schedule runs on
    the fraction of the time budget spent, so the run ends on time whatever the machine's load."""
    torch.manual_seed(args.seed)
    started = time.time()
    cfg = json.loads(args.config.read_text())
    model = open_clip.CLIP(**cfg["model_cfg"])
    # what open_clip's local-dir loader gives a config without a tokenizer entry (any config file name here)
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg["model_cfg"]["text_cfg"]["context_length"])
    mean = torch.tensor(cfg["preprocess_cfg"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["preprocess_cfg"]["std"]).view(1, 3, 1, 1)

    spec = str(args.folder) if args.folder is not None else args.dataset
    pixels, labels, class_names, notes = labelled_pixels(spec, cfg)
    n_classes = len(class_names)
    args.per_class = args.per_class or max(1, 128 // n_classes)
    generator = torch.Generator().manual_seed(args.seed)
    # a stratified monitor held out of training (a few per class), to watch zero-shot accuracy as it learns
    monitor_idx = torch.cat(
        [
            pool[torch.randperm(len(pool), generator=generator)[: max(1, args.monitor_n // n_classes)]]
            for pool in (torch.nonzero(labels == c).flatten() for c in range(n_classes))
            if len(pool) > 1
        ]
    )
    train_mask = torch.ones(len(labels), dtype=torch.bool)
    train_mask[monitor_idx] = False
    monitor_pixels, monitor_labels = _normalise(pixels[monitor_idx], mean, std), labels[monitor_idx]
    pixels, labels = pixels[train_mask], labels[train_mask]
    captions = captions_for(class_names, args.template)
    tokens = tokenizer(captions)
    tokens = tokens[:, : int(tokens.argmax(-1).max()) + 1]
    data_s = time.time() - started
    print(f"data: {len(labels)} training, {len(monitor_idx)} monitor images, {n_classes} classes in {data_s:.0f}s")
    for note in notes:
        print(f"note: {note}")
    sys.stdout.flush()

    with torch.no_grad():
        assert torch.allclose(encode_text_prefix(model, tokens), model.encode_text(tokenizer(captions)), atol=1e-5)

    optimizer = _optimizer(model, args)
    pools = [torch.nonzero(labels == c).flatten() for c in range(n_classes)]
    pools = [pool for pool in pools if len(pool)]
    queues = [pool[torch.randperm(len(pool), generator=generator)] for pool in pools]
    cursors = [0] * len(pools)
    budget = args.minutes * 60 if args.minutes else None
    history, step = [], 0

    def next_batch() -> torch.Tensor:
        picked = []
        for k, pool in enumerate(pools):
            for _ in range(args.per_class):
                if cursors[k] == len(pool):
                    queues[k], cursors[k] = pool[torch.randperm(len(pool), generator=generator)], 0
                picked.append(queues[k][cursors[k]])
                cursors[k] += 1
        return torch.stack(picked)

    def progress() -> float:
        done = [step / args.steps] if args.steps else []
        return max(done + ([(time.time() - train_started) / budget] if budget else []))

    model.train()
    train_started = time.time()
    while progress() < 1:
        factor = _lr_factor_at(step, progress(), args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * factor
        step += 1
        idx = next_batch()
        batch_labels = labels[idx]
        present, targets = torch.unique(batch_labels, return_inverse=True)
        image_features = F.normalize(model.encode_image(_normalise(pixels[idx], mean, std)), dim=-1)
        text_features = F.normalize(encode_text_prefix(model, tokens[present]), dim=-1)
        loss = deduplicated_clip_loss(image_features, text_features, targets, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

        if step % args.log_every == 0:
            elapsed = time.time() - train_started
            line = {
                "step": step,
                "loss": round(loss.item(), 4),
                "logit_scale": round(model.logit_scale.exp().item(), 2),
                "lr": args.lr * factor,
                "s_per_step": round(elapsed / step, 3),
                "progress": round(progress(), 3),
            }
            if step % (args.log_every * 10) == 0:
                line["monitor_zero_shot"] = _quick_zero_shot(model, monitor_pixels, monitor_labels, tokens)
            history.append(line)
            print(json.dumps(line), flush=True)
    train_s = time.time() - train_started
    final = {"step": step, "loss": round(loss.item(), 4), "logit_scale": round(model.logit_scale.exp().item(), 2)}
    final["monitor_zero_shot"] = _quick_zero_shot(model, monitor_pixels, monitor_labels, tokens)
    history.append(final)
    print(json.dumps(final), flush=True)

    _save(model, args.config, out)
    return {
        "data": spec,
        "classes": class_names,
        "n_train_images": len(labels),
        "n_monitor_images": len(monitor_idx),
        "notes": notes,
        "captions": captions,
        "template": args.template or "a photo of {a|an} {name} (the project's zero-shot prompt)",
        "seed": args.seed,
        "steps": step,
        "minutes_budget": args.minutes,
        "batch": args.per_class * len(pools),
        "batching": "class-balanced, each class cycled through a shuffled order",
        "lr": args.lr,
        "warmup": args.warmup,
        "weight_decay": args.wd,
        "optimizer": "AdamW(betas=(0.9, 0.98), eps=1e-6), linear warmup + cosine to 0 over the step or time budget",
        "loss": "CLIP loss over the batch's distinct captions, learnable logit_scale clamped to <= 100",
        "augmentation": "none",
        "params": sum(p.numel() for p in model.parameters()),
        "weights_bytes": (out / "open_clip_model.safetensors").stat().st_size,
        "data_s": round(data_s, 1),
        "train_s": round(train_s, 1),
        "machine": f"{platform.machine()} {_cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread",
        "history": history,
    }


def evaluate_labelled(model_dir: Path, spec: str, template: str | None) -> dict:
    """Zero-shot accuracy on a held-out labelled set via ``load_model`` + ``Encoder`` (what ``cgx`` runs)."""
    from crossgap_index.evaluation.data import load_dataset
    from crossgap_index.ingest.decode import decode_rgb

    data = load_dataset(spec)
    if data.images is None:
        raise CrossGapError(f"{spec} has no labelled images to evaluate on")
    encoder = Encoder(load_model(str(model_dir), "cpu"), batch_size=256)
    names = data.images.class_names
    images = encoder.encode_images([decode_rgb(data.images.read(i)) for i in range(len(data.images.items))])
    labels = data.images.labels
    prompts = encoder.encode_texts(concept_prompts(names))
    predicted = (images @ prompts.T).argmax(1)
    report = {
        "model": str(model_dir),
        "dataset": spec,
        "n_images": len(labels),
        "classes": len(names),
        "chance": 1 / len(names),
        "zero_shot_prompt": "a photo of {a|an} {class name} (cgx eval's)",
        "zero_shot_acc": float((predicted == labels).mean()),
        "per_class_acc": {name: float((predicted[labels == c] == c).mean()) for c, name in enumerate(names)},
        # the unit image features' mean against the mean of the captions they were taught with
        "modality_gap": float(np.linalg.norm(images.mean(0) - prompts[labels].mean(0))),
    }
    if template is not None:
        taught = encoder.encode_texts(captions_for(names, template))
        report["zero_shot_acc_training_template"] = float(((images @ taught.T).argmax(1) == labels).mean())
    return report


def _optimizer(model: open_clip.CLIP, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW with open_clip's own rule: no weight decay on gains, biases, norms and the temperature."""
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "ln" in n or "bias" in n or "logit_scale" in n]
    decay = [p for n, p in model.named_parameters() if not any(p is q for q in no_decay)]
    return torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": args.wd}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def _save(model: open_clip.CLIP, config: Path, out: Path) -> None:
    """The open_clip local-dir layout: the config beside fp16 weights."""
    out.mkdir(parents=True, exist_ok=True)
    if config.resolve() != (out / "open_clip_config.json").resolve():
        shutil.copy(config, out / "open_clip_config.json")
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))


def _lr_factor_at(step: int, progress: float, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine to 0 as ``progress`` (steps or time) goes to 1."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


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
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--folder", type=Path, help="train on a folder with one subfolder per class")
    source.add_argument("--dataset", help="train on a dataset spec, e.g. fashion-mnist:train")
    parser.add_argument(
        "--config",
        type=Path,
        default=BUNDLED / "open_clip_config.json",
        help="open_clip_config.json to train (default: the bundled crossgap-small's architecture)",
    )
    parser.add_argument("--steps", type=int, help="optimiser steps [synthetic: 1300; labelled: from --minutes]")
    parser.add_argument("--minutes", type=float, help="labelled sets: time budget of the training loop [10]")
    parser.add_argument(
        "--per-class", type=int, help="images per class in a batch [synthetic: 2; labelled: 128/classes]"
    )
    parser.add_argument("--template", help='labelled sets: caption of each image, e.g. "a photo of a {}"')
    parser.add_argument("--seed", type=int, default=0, help="labelled sets: initialisation and batch order")
    parser.add_argument("--eval-dataset", help="labelled sets: held-out folder or spec for zero-shot accuracy")
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--wd", type=float, default=0.1)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--monitor-n", type=int, default=480)
    parser.add_argument("--eval-n", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="folder for the weights (default: the bundled crossgap-small)")
    parser.add_argument("--eval-only", action="store_true", help="measure the weights already in --out")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared: one core for training, the other for people
    try:
        if args.folder is not None or args.dataset is not None:
            _main_labelled(args)
        else:
            _main_synthetic(args)
    except CrossGapError as exc:
        raise SystemExit(f"train_small: {exc}") from None


def _main_labelled(args: argparse.Namespace) -> None:
    if args.out is None:
        raise CrossGapError("--out MODEL_DIR is required with --folder or --dataset")
    if args.steps is None and args.minutes is None:
        args.minutes = 10.0
    started = time.time()
    out = args.out.resolve()
    report = {} if args.eval_only else {"train": train_labelled(args, out)}
    if args.eval_dataset:
        report["eval"] = evaluate_labelled(out, args.eval_dataset, args.template)
        print(json.dumps(report["eval"], indent=2))
    report["total_wall_s"] = round(time.time() - started, 1)
    OUT.mkdir(exist_ok=True)
    (OUT / f"train-{out.name}{'-eval' if args.eval_only else ''}.json").write_text(json.dumps(report, indent=2))


def _main_synthetic(args: argparse.Namespace) -> None:
    args.steps = 1300 if args.steps is None else args.steps
    args.per_class = 2 if args.per_class is None else args.per_class
    started = time.time()
    out = (args.out or BUNDLED).resolve()
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
