"""One object holding every inversion setting; the defaults are the published ones (Cross the Gap)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crossgap_index.errors import QueryError

if TYPE_CHECKING:  # torch is imported by the methods that need it: building a config must stay cheap
    import torch

    from crossgap_index.models.factory import LoadedModel

from crossgap_index.precision import PRECISIONS  # noqa: E402

# The one definition of the numeric bounds of inversion settings: InversionConfig enforces them for the
# library and the CLI, and the server's request model declares the same numbers from here. Beyond them
# the optimisation diverges (a learning rate of 1e30 turns every feature into NaN: no hits at all) or the
# prompt stops fitting the text tower's context.
LR_MAX = 10.0
N_TOKENS_MAX = 16
N_PATCHES_MAX = 64


@dataclass(frozen=True)
class InversionConfig:
    """Settings for OTI (image -> text feature) and OVI (text -> image feature).

    ``oti_steps`` / ``ovi_steps`` are quality knobs, not only costs: the paper's ablation shows
    retrieval quality peaking early while the loss keeps falling, so stop-on-plateau is not offered.
    ``fast=False`` selects the oracle (full context, everything recomputed, fp32, no compile);
    it must not be combined with ``precision="bf16"`` or ``compile=True``.
    ``precision``: the fast path runs the model cast to bf16 where ``auto`` finds it native
    (see ``crossgap_index.precision``); the loss, AdamW and its pseudo-token master copy stay fp32.
    ``batch_size``, ``cpu_threads`` and ``fast`` change speed only: each query's result depends on its own seed.
    The paper publishes 150 OTI steps and 1000 OVI steps; the defaults are 25 each, where retrieval quality
    peaks on our development data (benchmarks/RESULTS.md, the OTI sweep; benchmarks/results/text.md, the OVI
    sweep: 1000 steps gave no more and cost 40x). Everything else is the published setting.
    """

    oti_steps: int = 25
    ovi_steps: int = 25
    n_tokens: int = 1  # R pseudo-tokens (OTI)
    n_patches: int | None = None  # P pseudo-patches (OVI); None: 1 for patch-32 ViTs, 4 otherwise
    template: str = "a photo of {}"
    lr: float = 2e-2
    weight_decay: float = 0.01
    init_std: float = 0.02
    batch_size: int = 64
    fast: bool = True
    precision: str = "auto"  # auto: bf16 where native, but fp32 for a small model on a CPU (precision.py)
    compile: bool | None = None  # torch.compile the step; None: where the process asked (inversion/compiled.py)
    cpu_threads: int | None = None  # CPU intra-op threads of the loop; None: the rule of inversion/threads.py

    def __post_init__(self) -> None:
        problems = []
        for name in ("lr", "weight_decay", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{name} must be a finite number, got {value!r}")
        for name in ("oti_steps", "ovi_steps", "n_tokens", "batch_size"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                problems.append(f"{name} must be an integer, got {getattr(self, name)!r}")
        if problems:
            raise QueryError("invalid inversion settings: " + "; ".join(problems))
        if self.oti_steps < 0 or self.ovi_steps < 0:
            problems.append("steps must be >= 0")
        if not 1 <= self.n_tokens <= N_TOKENS_MAX:
            problems.append(f"n_tokens must be between 1 and {N_TOKENS_MAX}, got {self.n_tokens}")
        if self.n_patches is not None and not 1 <= self.n_patches <= N_PATCHES_MAX:
            problems.append(f"n_patches must be between 1 and {N_PATCHES_MAX}, got {self.n_patches}")
        if not isinstance(self.template, str) or self.template.count("{}") != 1:
            problems.append(f"template must contain '{{}}' exactly once, got {self.template!r}")
        if self.batch_size < 1:
            problems.append("batch_size must be >= 1")
        threads = self.cpu_threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            problems.append(f"cpu_threads must be None or an integer >= 1, got {threads!r}")
        if not 0 < self.lr <= LR_MAX:
            problems.append(f"lr must be > 0 and <= {LR_MAX:g}, got {self.lr:g}")
        if self.init_std <= 0 or self.weight_decay < 0:
            problems.append("init_std must be > 0, weight_decay >= 0")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.compile is not None and not isinstance(self.compile, bool):
            problems.append(f"compile must be None, True or False, got {self.compile!r}")
        if not self.fast and (self.precision == "bf16" or self.compile):
            problems.append("fast=False is the fp32 oracle: it takes neither precision='bf16' nor compile")
        if problems:
            raise QueryError("invalid inversion settings: " + "; ".join(problems))

    def precision_on(self, loaded: LoadedModel) -> str:
        """``fp32`` or ``bf16``: what this config runs in with ``loaded`` on its device (the oracle is always fp32)."""
        return loaded.inversion_precision(self.precision) if self.fast else "fp32"

    def resolved(self, loaded: LoadedModel) -> InversionConfig:
        """This config with ``auto`` replaced by the precision it means for ``loaded`` (for cache keys and records,
        and for the loop, which runs a resolved config)."""
        return dataclasses.replace(self, precision=self.precision_on(loaded))

    def compiles(self, device: torch.device) -> bool:
        """Whether the loop runs compiled: ``compile`` True, or None in a process that asked for it (a server).

        On the CPU the whole step is compiled (forward, loss, backward) beside AdamW's fused kernel: it pays where
        per-operator overhead dominates, once each shape's compilation is paid (benchmarks/results/oti-step-compile.md).
        On CUDA the feature function is compiled (unmeasured there: no GPU was lent for the CPU's measurements).
        """
        from crossgap_index.inversion.compiled import process_compiles

        wanted = process_compiles() if self.compile is None else self.compile
        return self.fast and wanted and device.type in ("cpu", "cuda")
