"""The modes ``cgx eval`` measures on each task, each with the one-line description its report prints."""

from __future__ import annotations

from collections.abc import Sequence

from crossgap_index.evaluation.settings import DEFAULT_ALPHA, IMAGES, TEXT_TO_IMAGE, TEXTS
from crossgap_index.inversion import InversionConfig
from crossgap_index.search.modes import Mode, default_cross, resolve_mode
from crossgap_index.search.peers import eval_modes as peer_eval_modes
from crossgap_index.words import RRF_K


def eval_modes(
    task: str,
    config: InversionConfig,
    names: Sequence[str],
    span_components: int | None = None,
    rrf_k: int = RRF_K,
    alpha: float = DEFAULT_ALPHA,
    model: str | None = None,
) -> dict[str, tuple[Mode, str]]:
    """The modes ``cgx eval`` measures for ``task``, each with a one-line description; ``default`` is what an
    untuned ``--cross`` serves with ``model``."""
    vocabulary = list(names) if len(names) >= 2 else None
    default = default_cross(model)
    modes: dict[str, tuple[Mode, str]] = {
        "intra": (resolve_mode("intra"), "query vs gallery, plain embeddings"),
        "default": (default.mode(), f"the untuned --cross ({default.source} default)"),
        "cross": (resolve_mode("cross", inversion=config), "inverted query (OTI / OVI) vs gallery"),
        "fused-rrf": (
            resolve_mode("fused", inversion=config, merge="rrf", rrf_k=rrf_k),
            "intra + cross, reciprocal rank fusion",
        ),
        "fused-score": (
            resolve_mode("fused", inversion=config, merge="score", alpha=alpha),
            "intra + cross, min-max normalised score sum",
        ),
    }
    if task == TEXT_TO_IMAGE:  # already inter-modal: the plain embeddings, and what maps both sides alike
        modes = {
            "intra": (resolve_mode("intra"), "caption vs images, plain embeddings"),
            "default": (resolve_mode("intra"), "the untuned --cross: a caption against images is served as it is"),
        }
    elif task == IMAGES:
        modes["cross-gallery"] = (resolve_mode("cross-gallery"), "query vs OTI(gallery), same OTI settings")
    else:
        modes["cross-gallery"] = (resolve_mode("cross-gallery"), "query vs OVI(gallery texts), same OVI settings")
    if vocabulary:
        span = {"vocabulary": vocabulary, "components": span_components}
        modes["span"] = (resolve_mode("span", projection=span), "both projected onto the vocabulary's text span")
        modes["concept"] = (
            resolve_mode("concept", projection={"vocabulary": vocabulary}),
            "both as distributions over the vocabulary's concepts",
        )
    published = {"preset": "published", "components": span_components}
    modes["span-imagenet"] = (
        resolve_mode("span", projection=published),
        "span over the ImageNet-1k names, the published PCA<- (bare names, raw features, d/2; no labels needed)",
    )
    modes["iso"] = (resolve_mode("iso"), "IsoCLIP projector-spectrum truncation")
    modes.update(peer_eval_modes(task))  # aqe, dba, nnn, qbnorm, center and a few compositions (search/peers.py)
    if task == IMAGES:
        modes["inverter"] = (resolve_mode("inverter"), "one-pass inversion network (OTI)")
        modes["warm"] = (resolve_mode("warm"), "inverter output + a few OTI steps")
    elif task == TEXTS:
        modes["inverter"] = (resolve_mode("inverter"), "one-pass inversion network (OVI)")
        modes["warm"] = (resolve_mode("warm"), "inverter output + a few OVI steps")
        # The span leg is the model's default span (what its untuned --cross projects with), not the published
        # one: on a model whose measured default differs, fusing with the published leg fuses with a weak leg.
        span = default.span_settings()
        if span_components is not None:
            span["components"] = span_components
        span_leg = resolve_mode("span", projection=span).legs[0]
        settings = ", ".join(f"{key} {value}" for key, value in span.items())
        for name, leg in (("cross", modes["cross"][0].legs[0]), ("inverter", modes["inverter"][0].legs[0])):
            modes[f"fused-span-{name}"] = (
                Mode("fused", (span_leg, leg), "rrf", rrf_k),
                f"the model's default span ({default.source}: {settings}) + {name}, rank fusion (label-free)",
            )
    return modes
