"""What one ``cgx eval`` run measures: the task names and a frozen ``EvalSettings`` that checks its own rules.

Every rule a setting can break on its own is checked once, when the settings are made, so a bad value is one
line before a model loads. Two rules need more than the settings and are checked where that is known: which
tasks the dataset holds (``wanted_tasks``) and the span components against the model's dimension (the run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from crossgap_index.errors import InputFileError, QueryError
from crossgap_index.inversion import InversionConfig
from crossgap_index.search.modes import SERVED_OTI_STEPS, Mode
from crossgap_index.words import RRF_K

IMAGES, TEXTS, TEXT_TO_IMAGE = "image-to-image", "text-to-text", "text-to-image"
TASKS = {"images": IMAGES, "texts": TEXTS, "text-to-image": TEXT_TO_IMAGE}
DEFAULT_ALPHA = 0.5
# cross / fused modes at the served default step count, unless the caller gives an InversionConfig
SERVED_INVERSION = InversionConfig(oti_steps=SERVED_OTI_STEPS)


@dataclass(frozen=True)
class EvalSettings:
    """Everything a run of ``evaluate`` is told besides its data and its progress callback.

    ``tasks``: a subset of ``TASKS``' keys (default: images and texts, whichever the dataset has). ``config``:
    the inversion settings of the cross and fused modes (default: the served ones). ``vocab``: concept names
    for the span and concept maps (default: the dataset's class names). ``sweep_steps`` x ``sweep_tokens``:
    also measure the image cross mode (OTI) at these step counts and pseudo-token counts, and ``sweep_steps`` x
    ``sweep_patches`` (None: the model's P) the text cross mode (OVI), each at every rate of ``sweep_lrs``
    (default: the config's). ``span_components``: directions kept by the span maps (default: the model's
    default span rule, ``default_cross``). ``rrf_k`` / ``alpha``: the fused modes' rank and score fusion.
    ``extra_modes``: more named modes to measure on image-to-image, e.g. an index's tuned mode as ``tuned``;
    ``task_modes``: task -> named modes to measure on that task. ``inverter`` / ``text_inverter``: trained
    networks for the inverter and warm modes of image / text queries, measured as they are (an index's own:
    what it serves); None: one trained on the evaluated items, without their labels (transductive).
    ``transductive``: with given networks, also measure freshly trained ones as ``inverter-transductive``.
    ``labelled_modes``: which named modes were fitted or chosen on this data's labels (e.g. ``tuned`` when
    tuned on the same dataset). ``precision``: the embedding model's (auto, fp32, bf16); inversion follows
    ``config.precision``.
    """

    model: str | None = None
    device: str = "auto"
    precision: str = "auto"
    config: InversionConfig = SERVED_INVERSION
    vocab: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None
    sweep_steps: tuple[int, ...] = ()
    sweep_tokens: tuple[int, ...] = (1,)
    sweep_patches: tuple[int | None, ...] = (None,)
    sweep_lrs: tuple[float, ...] = ()
    span_components: int | None = None
    rrf_k: int = RRF_K
    alpha: float = DEFAULT_ALPHA
    extra_modes: Mapping[str, Mode] = field(default_factory=dict)
    task_modes: Mapping[str, Mapping[str, Mode]] = field(default_factory=dict)
    inverter: object = field(default=None, repr=False)
    text_inverter: object = field(default=None, repr=False)
    transductive: bool = False
    labelled_modes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self._normalise()
        unknown = [t for t in self.tasks or () if t not in TASKS]
        if unknown:
            raise QueryError(f"unknown task '{unknown[0]}': use {' or '.join(TASKS)}")
        if any(s < 0 for s in self.sweep_steps) or any(r < 1 for r in self.sweep_tokens):
            raise QueryError("sweep steps must be >= 0 and sweep tokens >= 1")
        if any(p is not None and p < 1 for p in self.sweep_patches) or any(not lr > 0 for lr in self.sweep_lrs):
            raise QueryError("sweep patches must be >= 1 and sweep learning rates > 0")
        if self.span_components is not None and self.span_components < 1:
            raise QueryError(f"span components must be >= 1, got {self.span_components}")
        if not 0.0 <= self.alpha <= 1.0 or self.rrf_k < 1:
            raise QueryError("alpha must be in [0, 1] and rrf_k >= 1")
        if self.vocab is not None and len(set(self.vocab)) < 2:
            raise QueryError(f"a span vocabulary needs at least 2 names, got {len(set(self.vocab))}")

    def _normalise(self) -> None:
        """Sequences become tuples and mappings copies, so the settings cannot change under a run."""
        values = {
            "config": self.config or SERVED_INVERSION,
            "vocab": None if self.vocab is None else tuple(self.vocab),
            "tasks": None if self.tasks is None else tuple(self.tasks),
            "sweep_steps": tuple(self.sweep_steps),
            "sweep_tokens": tuple(self.sweep_tokens),
            "sweep_patches": tuple(self.sweep_patches),
            "sweep_lrs": tuple(self.sweep_lrs),
            "extra_modes": dict(self.extra_modes or {}),
            "task_modes": {task: dict(modes) for task, modes in (self.task_modes or {}).items()},
            "labelled_modes": frozenset(self.labelled_modes),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def named_modes(self, task: str) -> dict[str, Mode]:
        """The caller's named modes to measure on ``task`` (``extra_modes`` count for image-to-image)."""
        modes = dict(self.task_modes.get(task, {}))
        if task == IMAGES:
            modes.update(self.extra_modes)
        return modes

    def wanted_tasks(self, data) -> list[str]:
        """The tasks to run on ``data`` (an ``EvalDataset``): the asked ones, each of which it must hold, or
        image-to-image and text-to-text, whichever it has (text-to-image only when asked: it keeps the default
        run's cost)."""
        available = {
            IMAGES: data.images is not None,
            TEXTS: data.texts is not None,
            TEXT_TO_IMAGE: data.images is not None and bool(data.captions),
        }
        if self.tasks is None:
            wanted = [t for t, ok in available.items() if ok and t != TEXT_TO_IMAGE]
        else:
            missing = [t for t in self.tasks if not available[TASKS[t]]]
            if missing:
                raise InputFileError(f"dataset {data.spec} has no {missing[0]} to evaluate")
            wanted = [TASKS[t] for t in self.tasks]
        if self.sweep_steps and IMAGES not in wanted and TEXTS not in wanted:
            raise QueryError(
                "--sweep-steps measures OTI on image-to-image or OVI on text-to-text: neither is evaluated"
            )
        return wanted
