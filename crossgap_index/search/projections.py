"""Fixed feature maps that compare features in a better space, at zero query cost.

Each map is applied to stored unit embeddings on the query and on the gallery side alike, so no image
or text has to be re-encoded. Two are linear, a (d, d) matrix ``M`` and ``normalise(f @ M.T)``:

* ``span`` (Herzog & Wang): the orthogonal projector onto the top principal directions of a
  vocabulary's text features (``SpanProjection``).
* ``iso`` (IsoCLIP): truncate the spectrum of the product of the two towers' projection matrices.
  With W_i (d x d_v) the image projection and W_t (d x d_t) the text projection, take the SVD
  Psi = W_i^T W_t = U S V^T, keep U_k = U[:, k_top : r - k_bottom] and use W_i U_k U_k^T on the
  pre-projection image features (V_k likewise for texts). U_k lies in the row space of W_i, so
  W_i U_k U_k^T x = (W_i U_k U_k^T pinv(W_i)) (W_i x): a fixed d x d map of the ordinary embedding.

and one is not:

* ``concept``: each feature becomes its distribution over a vocabulary of concept names, the softmax of
  its cosine with each name's text feature at temperature ``tau``, compared by the Bhattacharyya
  coefficient (the dot product of the square roots: unit vectors of dimension V). This is the critique's
  reading (task ambiguity: collapse an image onto its nameable concepts) taken to the end, in the manner of
  concept-bottleneck representations. It needs a vocabulary that names the concepts that matter.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass, field

import numpy as np

from crossgap_index.errors import IncompatibleModelError, QueryError
from crossgap_index.search.span import SpanProjection, span_settings
from crossgap_index.search.vocabulary import vocabulary_names, vocabulary_texts

# IsoCLIP's published OpenAI ViT-B/32 setting (of r = 512 directions), kept as fractions of r for models the
# paper gives no setting for.
ISO_DEFAULTS = {"image": (150 / 512, 50 / 512), "text": (20 / 512, 100 / 512)}
# (k_top, k_bottom) as the IsoCLIP paper publishes them, per model (canonical spec) and query modality.
ISO_PUBLISHED = {
    "ViT-B-32/openai": {"image": (150, 50), "text": (20, 100)},
    "ViT-B-32-quickgelu/openai": {"image": (150, 50), "text": (20, 100)},
    "ViT-B-32/datacomp_xl_s13b_b90k": {"image": (50, 50)},
    "ViT-L-14/openai": {"image": (250, 200)},
    "ViT-L-14-quickgelu/openai": {"image": (250, 200)},
}


@dataclass(frozen=True)
class Projection:
    """A named (d, d) map with the settings that made it; ``apply`` is what query and gallery both go through."""

    kind: str
    matrix: np.ndarray
    settings: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Content hash of the map: a derived gallery collection is valid only for the same fingerprint."""
        digest = hashlib.blake2b(np.ascontiguousarray(self.matrix, np.float32).tobytes(), digest_size=8)
        return f"{self.kind}-{digest.hexdigest()}"

    @property
    def out_dim(self) -> int:
        return int(self.matrix.shape[0])

    def apply(self, features: np.ndarray) -> np.ndarray:
        """Unit float32 rows ``normalise(f @ M.T)``."""
        feats = _rows(features, self.matrix.shape[1]).astype(np.float32)
        mapped = feats @ self.matrix.T
        norms = np.linalg.norm(mapped, axis=1, keepdims=True)
        return np.ascontiguousarray(mapped / np.maximum(norms, 1e-12), dtype=np.float32)


def span_projection(vocabulary_features: np.ndarray, n_components: int | str | None = None, **settings) -> Projection:
    """The projector onto the top principal directions of a vocabulary's text features (``n_components``: a
    count, ``"d/N"`` or ``"ev:P"``, see ``search.span``)."""
    try:
        span = SpanProjection().fit(vocabulary_features, n_components)
    except ValueError as exc:
        raise QueryError(f"span projection: {exc}") from exc
    components = span.components.astype(np.float64)
    matrix = (components.T @ components).astype(np.float32)
    fitted = {"n_components": span.n_components, "explained": round(span.explained, 6)}
    return Projection("span", matrix, {"components": span.n_components, **settings, **fitted})


def fit_span(encoder, params: dict, defaults: dict) -> Projection:
    """The span map a leg's ``params`` ask for, with ``encoder`` (the model's text tower); settings missing
    from ``params`` (and its ``preset``) come from ``defaults``. The map's settings record every explicit value."""
    try:
        settings = span_settings(params, defaults)
    except ValueError as exc:
        raise QueryError(f"span projection: {exc}") from exc
    names = vocabulary_names(settings["vocabulary"])
    features = _vocabulary_features(encoder, names, settings["prompt"], settings["features"] == "unit")
    return span_projection(features, settings["components"], **{**params, **settings})


_VOCABULARY_FEATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _vocabulary_features(encoder, names: list[str], prompt: str, normalize: bool) -> np.ndarray:
    """The vocabulary's text features, embedded once per encoder: span variants differ in components only."""
    key = (prompt, normalize, hashlib.blake2b("\n".join(names).encode(), digest_size=16).hexdigest())
    try:
        known = _VOCABULARY_FEATURES.setdefault(encoder, {})
    except TypeError:  # an encoder that cannot be weakly referenced: embed every time
        known = {}
    if key not in known:
        known[key] = encoder.encode_texts(vocabulary_texts(names, prompt), normalize=normalize)
    return known[key]


def iso_published(model_name: str, modality: str) -> tuple[int, int] | None:
    """IsoCLIP's published (k_top, k_bottom) for this model and query modality, or None where the paper
    gives none (then the OpenAI B/32 setting is scaled to the model's rank)."""
    return ISO_PUBLISHED.get(model_name, {}).get(modality)


def projection_weights(model, modality: str, name: str = "the model") -> np.ndarray:
    """W (d x d_tower) of a bias-free linear projection from the tower's width to the joint space.

    Supported: open_clip ViT image towers (``visual.proj``) and text towers whose ``text_projection`` is a
    parameter or a bias-free ``nn.Linear``. Anything else (attention pooling, MLP heads, biases) is refused:
    IsoCLIP's map is exact only for a linear projection.
    """
    import torch

    if modality == "image":
        proj = getattr(getattr(model, "visual", None), "proj", None)
        if isinstance(proj, torch.Tensor):
            return proj.detach().float().cpu().numpy().T
        raise IncompatibleModelError(f"iso: the image tower of {name} has no linear projection (visual.proj)")
    proj = getattr(model, "text_projection", None)
    if proj is None:
        proj = getattr(getattr(model, "text", None), "text_projection", None)
    if isinstance(proj, torch.nn.Linear) and proj.bias is None:
        return proj.weight.detach().float().cpu().numpy()
    if isinstance(proj, torch.Tensor):
        return proj.detach().float().cpu().numpy().T
    raise IncompatibleModelError(f"iso: the text tower of {name} has no bias-free linear projection")


def iso_projection(
    image_weights: np.ndarray,
    text_weights: np.ndarray,
    modality: str,
    k_top: int | None = None,
    k_bottom: int | None = None,
) -> Projection:
    """IsoCLIP's map for ``modality`` ('image' or 'text') from the two projection matrices (d x d_v, d x d_t)."""
    if modality not in ISO_DEFAULTS:
        raise QueryError(f"iso: modality must be image or text, got {modality!r}")
    w_i, w_t = np.asarray(image_weights, np.float64), np.asarray(text_weights, np.float64)
    u, s, vt = np.linalg.svd(w_i.T @ w_t, full_matrices=False)
    rank = int((s > 1e-6 * s[0]).sum()) if s[0] > 0 else 0
    top_default, bottom_default = ISO_DEFAULTS[modality]
    k_top = round(rank * top_default) if k_top is None else k_top
    k_bottom = round(rank * bottom_default) if k_bottom is None else k_bottom
    if k_top < 0 or k_bottom < 0 or k_top + k_bottom >= rank:
        raise QueryError(f"iso: need 0 <= k_top, k_bottom and k_top + k_bottom < {rank}, got {k_top}, {k_bottom}")
    w, basis = (w_i, u) if modality == "image" else (w_t, vt.T)
    kept = basis[:, k_top : rank - k_bottom]
    matrix = w @ kept @ kept.T @ np.linalg.pinv(w)
    settings = {"modality": modality, "k_top": k_top, "k_bottom": k_bottom, "rank": rank - k_top - k_bottom}
    return Projection("iso", matrix.astype(np.float32), settings)


@dataclass(frozen=True)
class ConceptMap:
    """f -> sqrt(softmax(f . T^T / tau)) over the V concept text features T: unit rows of dimension V."""

    vocabulary_features: np.ndarray
    tau: float
    settings: dict = field(default_factory=dict)
    kind: str = "concept"

    def __post_init__(self) -> None:
        if not np.isfinite(self.tau) or self.tau <= 0:
            raise QueryError(f"concept: tau must be > 0, got {self.tau}")
        if self.vocabulary_features.ndim != 2 or len(self.vocabulary_features) < 2:
            raise QueryError("concept: the vocabulary needs at least 2 names")

    @property
    def out_dim(self) -> int:
        return int(self.vocabulary_features.shape[0])

    @property
    def fingerprint(self) -> str:
        digest = hashlib.blake2b(np.ascontiguousarray(self.vocabulary_features, np.float32).tobytes(), digest_size=8)
        digest.update(np.float64(self.tau).tobytes())
        return f"concept-{digest.hexdigest()}"

    def apply(self, features: np.ndarray) -> np.ndarray:
        """Unit float32 rows: the square root of each feature's concept distribution."""
        feats = _rows(features, self.vocabulary_features.shape[1])
        logits = feats @ self.vocabulary_features.T.astype(np.float64)
        logits = (logits - logits.max(axis=1, keepdims=True)) / self.tau
        weights = np.exp(logits)
        weights /= weights.sum(axis=1, keepdims=True)
        return np.ascontiguousarray(np.sqrt(weights), dtype=np.float32)


def _rows(features, dim: int) -> np.ndarray:
    """Finite float64 rows of dimension ``dim``, or a one-line QueryError."""
    feats = np.atleast_2d(np.asarray(features, np.float64))
    if feats.ndim != 2 or feats.shape[1] != dim:
        raise QueryError(f"features must be rows of dimension {dim}, got shape {feats.shape}")
    if not np.isfinite(feats).all():
        raise QueryError("features must be finite (no NaN or inf)")
    return feats


# Anything with kind, settings, fingerprint, out_dim and apply(features) -> unit rows.
FeatureMap = Projection | ConceptMap
