"""Numeric precision of model compute: which one ``auto`` picks, and when vectors of two precisions may mix.

``fp32`` runs the model as trained. ``bf16`` casts the weights once to bfloat16 and runs the
whole model in it; the parts where rounding accumulates stay fp32 (the L2 normalisation of
output features, the inversion loss, the optimiser and its master copy of the pseudo-tokens),
and stored vectors are fp32 either way. ``auto`` picks bf16 only where it pays:

* the hardware runs it natively (CPU: AVX512-BF16 or AMX; CUDA: ``torch.cuda.is_bf16_supported()``),
  since emulated bf16 is slower than fp32; embedding then runs in bf16 on every model (1.2-2.3x fp32's
  images/s at batch 64 on 14 models, benchmarks/results/precision-models.md);
* inversion (OTI/OVI) on a CPU also weighs the model: bf16 only from ``CPU_INVERSION_BF16_MIN_BYTES``
  of fp32 weights. A small model's step is bound by per-operator overhead, and bf16's fixed lanes
  (inversion/optimise.py: a lone OTI query runs as 8 rows) cost more than its arithmetic saves:
  crossgap-small's OTI step runs 1.2-3x faster in fp32, and every model up to 159 MiB measured ran OTI
  slower in bf16; from 389 MiB (RN50, ViT-M-32, ViT-B-32, ViT-B-16) bf16 is at parity or faster
  (ViT-B-32's OVI step 2x). The one published model in the gap, ViT-S-32 (241 MiB), was mixed.

A new index asked for ``auto`` also checks the model itself: where its bf16 features do not agree
with fp32 (below), the index is built in fp32.

Mixing rule for an index: bf16 and fp32 vectors of one model may live in one index, and a query
made in one precision may search vectors made in the other, when the two precisions agree on
that model: the minimum cosine between fp32 and bf16 features of a fixed probe (synthetic images
and prompts, ``crossgap_index.models.encoder.precision_agreement``) is at least ``MIX_MIN_COSINE``.
The probe is measured once per index (when it is created under ``auto`` on bf16 hardware, else
when a second precision first meets it) and recorded in the manifest. Below the threshold
an explicit other precision is refused in one line and ``auto`` keeps the index's precision.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from crossgap_index.errors import CrossGapError

if TYPE_CHECKING:  # torch loads where models run, not where a setting is checked
    import torch

PRECISIONS = ("auto", "fp32", "bf16")
MIXED = "mixed"  # an index holding vectors of both precisions (allowed only within the agreement)
STORED_PRECISIONS = ("fp32", "bf16", MIXED)
# Probe agreement measured on this project's models: ViT-B-32 0.99993, ViT-B-16-SigLIP 0.99995,
# crossgap-small 0.99997, tiny-random 0.99990 (random weights; see tests/test_precision.py).
MIX_MIN_COSINE = 0.999
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Inversion on a CPU runs bf16 from this many bytes of fp32 weights: inside the measured gap between the largest
# model where fp32 won (159 MiB) and the smallest where bf16 did not lose (389 MiB); see the module docstring.
CPU_INVERSION_BF16_MIN_BYTES = 256 * 2**20


class PrecisionError(CrossGapError):
    """A precision setting that is unknown or does not fit the index's vectors."""


def check_setting(setting: str) -> str:
    if setting not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    return setting


def bf16_native(device: torch.device) -> bool:
    """True when ``device`` runs bf16 matmuls in hardware (the check ``auto`` rests on)."""
    import torch

    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4 has no emulation argument and answers for native support
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_bf16()
    return False


def resolve(setting: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``setting`` on ``device``: the precision a model embeds in."""
    if check_setting(setting) != "auto":
        return setting
    return "bf16" if bf16_native(device) else "fp32"


def resolve_inversion(setting: str, device: torch.device, weight_bytes: int) -> str:
    """``fp32`` or ``bf16`` for ``setting`` on ``device``: the precision a model of ``weight_bytes`` bytes of fp32
    weights inverts in (on a CPU, ``auto`` takes bf16 only for a model of ``CPU_INVERSION_BF16_MIN_BYTES`` or more)."""
    wanted = resolve(setting, device)
    if setting == "auto" and device.type == "cpu" and weight_bytes < CPU_INVERSION_BF16_MIN_BYTES:
        return "fp32"
    return wanted


def dtype_of(precision: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    try:
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    except OSError:  # not Linux: no cheap, reliable check; fp32 is the safe answer
        return False
    words = set(flags.split())
    return any(flag in words for flag in _CPU_BF16_FLAGS)


def precision_for_new_index(setting: str, device: torch.device, agreement: Callable[[], float]) -> str:
    """The precision a new index embeds in: ``auto`` takes bf16 only where the model's probe agrees."""
    wanted = resolve(setting, device)
    if setting == "auto" and wanted == "bf16" and agreement() < MIX_MIN_COSINE:
        return "fp32"
    return wanted


def precision_for_index(
    setting: str, stored: str, device: torch.device, agreement: Callable[[], float], where: str
) -> str:
    """The precision to embed with into (or query) an index whose vectors are in ``stored``.

    ``agreement()`` gives the model's fp32/bf16 probe agreement; it is called only when the two
    precisions differ. Raises PrecisionError (one line, naming ``where``) for an explicit setting
    the index's vectors do not agree with, and for a stored precision this version does not know.
    """
    if stored not in STORED_PRECISIONS:
        raise PrecisionError(
            f"{where} holds vectors in precision {stored!r}, which this crossgap-index does not know; upgrade it"
        )
    wanted = resolve(setting, device)
    if stored in (wanted, MIXED):
        return wanted
    cosine = agreement()
    if cosine >= MIX_MIN_COSINE:
        return wanted
    if setting == "auto":
        return stored
    raise PrecisionError(
        f"{where} holds {stored} vectors; {wanted} features of its model agree with them only to cosine "
        f"{cosine:.4f} (mixing needs >= {MIX_MIN_COSINE}): use --precision {stored} or auto, or rebuild the index"
    )


def after_write(stored: str, written: str, empty: bool) -> str:
    """The index's precision once vectors in ``written`` are added to one holding ``stored`` (or nothing)."""
    return written if empty or stored == written else MIXED
