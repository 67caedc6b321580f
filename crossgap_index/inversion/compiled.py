"""The inversion step compiled by ``torch.compile`` for long-lived processes (a server, an evaluation).

On the CPU a small OTI step (crossgap-small: about 140 operators on a few rows) costs its operators' overhead, not
their arithmetic. Inductor fuses the step's elementwise work (layer norms, GELUs, residual adds, the loss) into a
few generated kernels and runs forward and backward as two graph calls; the optimiser is AdamW's fused kernel (one
operator for the whole update). Measured in benchmarks/results/oti-step-compile.md, after each compiled shape's
own warm-up; compiling a shape costs seconds to a minute of CPU on a 2-core machine, so a one-shot CLI query never
compiles: ``InversionConfig.compile=None`` (the default) compiles only where the process asked for it
(``compile_in_process``, the server's ``--compile-inversion`` at start), ``True`` always, ``False`` never.

Compiled code is kept per feature function: one per (model weights, direction, template, tokens/patches, fast
path) in this process, so every later query with those settings reuses it. bf16 chunks are whole lanes (one
shape: one compilation); fp32 chunks vary with the batch, and torch.compile makes the batch dimension dynamic
after the second size it sees (two compilations cover every size). The eager loop stays the oracle
(tests/test_inversion_compiled.py).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

T = TypeVar("T")
Losses = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_process_compiles = False
_lock = threading.Lock()
# model weights (the module a feature function reads) -> settings key -> the loop's setup with its compiled step
_kept: weakref.WeakKeyDictionary[torch.nn.Module, dict[Hashable, object]] = weakref.WeakKeyDictionary()


def compile_in_process(enabled: bool = True) -> None:
    """Compile the inversion steps of every later query in this process whose config leaves ``compile`` unset."""
    global _process_compiles
    _process_compiles = bool(enabled)


def process_compiles() -> bool:
    """Whether this process asked for compiled inversion steps (``compile_in_process``)."""
    return _process_compiles


def kept(model: torch.nn.Module, key: Hashable, build: Callable[[], T]) -> T:
    """What this process keeps for ``model`` and ``key`` (a setup and its compiled step), built the first time."""
    with _lock:
        per_model = _kept.setdefault(model, {})
        if key not in per_model:
            per_model[key] = build()
        return per_model[key]  # type: ignore[return-value]


def kept_steps() -> int:
    """How many compiled steps this process keeps (one per model and settings)."""
    with _lock:
        return sum(len(per_model) for per_model in _kept.values())


def compiled(losses: Losses) -> Losses:
    """``losses`` compiled (inductor); its backward is compiled with it (AOT autograd)."""
    return torch.compile(losses, fullgraph=True)


def optimizer(params: torch.Tensor, lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW over the pseudo-tokens: the fused kernel beside a compiled step, torch's default beside the eager one."""
    return torch.optim.AdamW([params], lr=lr, weight_decay=weight_decay, fused=True if fused else None)
