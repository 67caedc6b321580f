"""A training run of the inverter cut short by Ctrl-C, kept so that the same run resumes where it stopped.

One safetensors file beside the index (``<network file>.partial``): the network's and AdamW's tensors, the
random generators' states and the epoch's order as tensors; the step, the epoch position, the losses so far, the
seconds spent and what the run is (model, settings, a digest of the training features) in its JSON header.
A run resumes only from a checkpoint of the same run (same model, settings and features): a resumed run ends
with the network an uninterrupted run gives. Nothing here is a pickle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT = "crossgap-inverter-training/1"


@dataclass
class TrainingState:
    """Where a run stands after ``step`` steps."""

    step: int
    position: int
    order: torch.Tensor
    losses: list[float]
    seconds: float
    net: dict[str, torch.Tensor]
    optimizer: dict
    generator: torch.Tensor
    torch_rng: torch.Tensor


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C between two training steps: the run's state is saved at ``path`` after ``step`` of ``steps``."""

    def __init__(self, step: int, steps: int, path: Path):
        super().__init__(f"interrupted after step {step} of {steps}; saved to {path}")
        self.step, self.steps, self.path = step, steps, path


def run_identity(model: str, config: dict, features: np.ndarray) -> str:
    """What a checkpoint must match to be resumed: the model, the settings and the features trained on."""
    digest = hashlib.blake2b(np.ascontiguousarray(features, np.float32).tobytes(), digest_size=16).hexdigest()
    return json.dumps({"model": model, "config": config, "features": digest, "shape": list(features.shape)})


def save_state(path: Path, identity: str, state: TrainingState) -> None:
    """Write the checkpoint atomically (a full disk leaves the previous one, or none)."""
    from safetensors.torch import save_file

    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in state.net.items()}
    groups = state.optimizer["param_groups"]
    for index, slots in state.optimizer["state"].items():
        for name, value in slots.items():
            tensors[f"opt.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["generator"] = state.generator.contiguous()
    tensors["torch_rng"] = state.torch_rng.contiguous()
    tensors["order"] = state.order.cpu().contiguous()
    meta = {
        "format": FORMAT,
        "identity": identity,
        "step": str(state.step),
        "position": str(state.position),
        "losses": json.dumps(state.losses),
        "seconds": repr(state.seconds),
        "param_groups": json.dumps(groups),
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), meta)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_state(path: Path, identity: str) -> TrainingState | None:
    """The saved state of this run, or None: no checkpoint, one of another run, or one that cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("identity") != identity:
            return None
        tensors = load_file(str(path))
        optimizer: dict = {"state": {}, "param_groups": json.loads(meta["param_groups"])}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, index, name = key.split(".", 2)
                optimizer["state"].setdefault(int(index), {})[name] = value
        return TrainingState(
            step=int(meta["step"]),
            position=int(meta["position"]),
            order=tensors["order"],
            losses=json.loads(meta["losses"]),
            seconds=float(meta["seconds"]),
            net={k[len("net.") :]: v for k, v in tensors.items() if k.startswith("net.")},
            optimizer=optimizer,
            generator=tensors["generator"],
            torch_rng=tensors["torch_rng"],
        )
    except (OSError, SafetensorError, KeyError, ValueError, RuntimeError, TypeError):
        return None
