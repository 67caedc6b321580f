"""Concept vocabularies for the span and concept maps: the names, and the prompts they are embedded with."""

from __future__ import annotations

from collections.abc import Sequence

from crossgap_index.errors import QueryError

IMAGENET = "imagenet"  # open_clip's ImageNet-1k class names
PROMPT = "a photo of {}"  # as CLIP is queried: "a photo of a red circle"


def vocabulary_names(vocabulary: str | Sequence[str]) -> list[str]:
    """Sorted distinct concept names: 'imagenet', or an explicit list (e.g. a dataset's class names)."""
    if isinstance(vocabulary, str):
        if vocabulary != IMAGENET:
            raise QueryError(f"unknown vocabulary '{vocabulary}': use 'imagenet' or give the names")
        from open_clip import IMAGENET_CLASSNAMES

        return sorted(set(IMAGENET_CLASSNAMES))
    names = sorted({str(n).strip() for n in vocabulary if str(n).strip()})
    if len(names) < 2:
        raise QueryError(f"a vocabulary needs at least 2 distinct names, got {len(names)}")
    return names


def concept_prompts(names: Sequence[str]) -> list[str]:
    """Prompts 'a photo of a/an {name}': the zero-shot classifier and the span and concept vocabularies."""
    return [PROMPT.format(("an " if name[:1].lower() in "aeiou" else "a ") + name) for name in names]


def vocabulary_texts(names: Sequence[str], prompt: str = "photo") -> list[str]:
    """What the text tower embeds for each name: the bare name (``raw``, as the published span code does) or
    the photo prompt (``photo``)."""
    if prompt == "raw":
        return list(names)
    if prompt == "photo":
        return concept_prompts(names)
    raise QueryError(f"unknown vocabulary prompt {prompt!r}: use raw or photo")
