"""One entry point, ``load_model``, resolves every model spec the project accepts.

Spec forms:
  * a bundled name: ``tiny-random`` (deterministic random weights), ``crossgap-small``;
  * an open_clip pretrained model: ``ARCH/TAG`` or ``ARCH::TAG`` (``ViT-B-32/datacomp_xl_s13b_b90k``);
    weights come through open_clip / huggingface_hub, so ``HF_HOME`` and ``HF_HUB_OFFLINE`` apply;
  * a local checkpoint: ``ARCH::/path/to/weights.safetensors``, or a folder holding
    ``open_clip_config.json`` and weights (open_clip's ``local-dir`` layout);
  * ``ARCH/random``: the architecture with seeded random weights, for benchmarks and tests
    that need the real compute of a large model but no download.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
from torch.overrides import TorchFunctionMode

from crossgap_index.errors import ModelUnavailableError
from crossgap_index.models._registry import RANDOM_INIT_SEED, bundled_dir, bundled_names
from crossgap_index.models.offline import go_offline_if_unreachable
from crossgap_index.models.spec import (  # noqa: F401 - re-exported: the spec layer predates its own module
    DEFAULT_MODEL,
    MODEL_ENV_VAR,
    RANDOM_TAG,
    ModelSpec,
    check_device,
    default_model_spec,
    local_weights,
    parse_spec,
    weights_file,
)
from crossgap_index.precision import dtype_of, resolve_inversion


@dataclass
class LoadedModel:
    """A frozen open_clip model with the transforms that belong to it."""

    spec: ModelSpec
    model: torch.nn.Module
    preprocess: Callable  # PIL image -> (3, H, W) tensor
    tokenizer: Callable  # list[str] -> (n, context_length) int64 tensor
    device: torch.device
    _casts: dict[str, torch.nn.Module] = field(default_factory=dict, repr=False)
    _casting: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if _has_text_proj(self.model) else _probe_dim(self)

    @functools.cached_property
    def weight_bytes(self) -> int:
        """The model's weights in fp32 bytes: what ``auto`` weighs to pick inversion's precision on a CPU."""
        return sum(p.numel() for p in self.model.parameters()) * 4

    def inversion_precision(self, setting: str) -> str:
        """``fp32`` or ``bf16``: the precision this model inverts in on its device for the precision ``setting``."""
        return resolve_inversion(setting, self.device, self.weight_bytes)

    def model_in(self, precision: str) -> torch.nn.Module:
        """The model with its weights in ``precision`` ('fp32' or 'bf16'): cast once, then kept beside ``model``."""
        if precision == "fp32":
            return self.model
        with self._casting:  # threads that arrive together cast once
            if precision not in self._casts:
                self._casts[precision] = copy.deepcopy(self.model).to(dtype_of(precision))
            return self._casts[precision]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, number = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ModelUnavailableError(f"--device {device} was asked for, but torch sees no CUDA device")
        if number and int(number) >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ModelUnavailableError(
                f"--device {device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelUnavailableError(f"--device {device} was asked for, but this torch has no MPS (Apple GPU) device")
    if kind == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ModelUnavailableError(f"--device {device} was asked for, but torch sees no XPU device")
    return torch.device(device)


def load_model(spec: str | ModelSpec, device: str | torch.device = "auto") -> LoadedModel:
    """Build the open_clip model for ``spec``, frozen, in eval mode, on ``device``."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    local_weights(parsed)  # refuses pickles, and folders that would load no weights at all
    if parsed.kind == "pretrained":
        go_offline_if_unreachable()
    if parsed.kind in ("bundled", "local-dir"):
        folder = bundled_dir(parsed.arch) if parsed.kind == "bundled" else Path(parsed.source)
        model_name, pretrained = f"local-dir:{folder}", None
    else:
        folder = None
        if parsed.arch not in open_clip.list_models():
            raise ModelUnavailableError(f"unknown open_clip architecture '{parsed.arch}' (see open_clip.list_models())")
        model_name, pretrained = parsed.arch, None if parsed.kind == "random" else parsed.source
        if parsed.kind == "pretrained" and parsed.source not in open_clip.list_pretrained_tags_by_model(parsed.arch):
            known = ", ".join(open_clip.list_pretrained_tags_by_model(parsed.arch)) or "none"
            raise ModelUnavailableError(
                f"unknown pretrained tag '{parsed.source}' for {parsed.arch} (known: {known}); "
                "or give ARCH::/path/to/weights"
            )
    overwritten = _loads_every_weight(parsed)
    try:
        with torch.random.fork_rng(devices=[]), _RandomFillsSkipped() if overwritten else contextlib.nullcontext():
            torch.manual_seed(RANDOM_INIT_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=dev, weights_only=True
            )
        tokenizer = _tokenizer(model_name, folder)
    except Exception as exc:  # noqa: BLE001 - open_clip/hf_hub raise many types for "cannot fetch"
        raise ModelUnavailableError(_unavailable_message(parsed, exc)) from exc
    if parsed.kind == "local-dir":
        local_weights(parsed)  # still there: open_clip only warns when a folder has none, and nothing filled them
    model.eval().requires_grad_(False)
    return LoadedModel(parsed, model, preprocess, tokenizer, dev)


_tokenizers: dict[tuple, Callable] = {}
_tokenizers_lock = threading.Lock()


def _tokenizer(model_name: str, folder: Path | None) -> Callable:
    """open_clip's tokenizer for ``model_name``; its own BPE tokenizer is built once per process and shared by every
    load of the model: building one parses the BPE vocabulary (~60 ms, as much as building crossgap-small), and it
    holds the model's vocabulary and context length, not its weights. A model folder's is built again when its
    config changes. Hugging Face tokenizers (SigLIP and other custom text towers) are built per load as before: they
    read files of their own and are not safe to share between threads."""
    stamp = None
    if folder is not None:
        config = (folder / "open_clip_config.json").stat()
        stamp = (config.st_size, config.st_mtime_ns)
    key = (model_name, stamp)
    with _tokenizers_lock:
        if key in _tokenizers:
            return _tokenizers[key]
    built = open_clip.get_tokenizer(model_name)
    if isinstance(built, open_clip.tokenizer.SimpleTokenizer):
        with _tokenizers_lock:
            built = _tokenizers.setdefault(key, built)
    return built


def _loads_every_weight(spec: ModelSpec) -> bool:
    """Whether building ``spec`` ends in a checkpoint loaded over every weight: open_clip loads a full checkpoint
    (a pretrained tag, a local file or folder, a bundled model's weights) with ``strict=True``, so a parameter it
    does not replace is an error. Random specs, and a bundled folder without weights (tiny-random), keep the init."""
    return spec.kind == "pretrained" or weights_file(spec) is not None


class _RandomFillsSkipped(TorchFunctionMode):
    """While active, random fills leave their tensor as it is: torch.nn.init's ``uniform_``, ``normal_`` and
    ``kaiming_uniform_`` (which hand themselves to the mode whole), and the ``Tensor.uniform_`` / ``normal_`` that
    the other fills and open_clip's ``init_parameters`` end in. Used only where a checkpoint loaded strictly right
    after replaces every weight: filling ViT-B-32 with random numbers first cost 1.2 of its 1.4 s build. Torch
    function modes are per thread, so other threads' fills stay real; computed tensors (causal masks, made with
    ``fill_``) are untouched."""

    _SKIPPED = frozenset(
        {torch.Tensor.uniform_, torch.Tensor.normal_, torch.nn.init.uniform_, torch.nn.init.normal_}
        | {torch.nn.init.kaiming_uniform_}
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._SKIPPED:
            return args[0] if args else kwargs["tensor"]  # torch.nn.init passes its tensor by name
        return func(*args, **(kwargs or {}))


def _unavailable_message(spec: ModelSpec, exc: Exception) -> str:
    cause = " ".join(str(exc).split()) or type(exc).__name__  # whole, on one line
    return (
        f"cannot load model '{spec.canonical}': {cause}. Offline options: "
        f"a bundled model ({', '.join(bundled_names())}), weights already in the Hugging Face cache "
        "(HF_HOME, HF_HUB_OFFLINE=1), or local weights (--model ARCH::/path/to/weights.safetensors)"
    )


def _has_text_proj(model: torch.nn.Module) -> bool:
    proj = getattr(model, "text_projection", None)
    return isinstance(proj, torch.Tensor) and proj.ndim == 2


def _probe_dim(loaded: LoadedModel) -> int:
    with torch.no_grad():
        return int(loaded.model.encode_text(loaded.tokenizer(["a"]).to(loaded.device)).shape[-1])
