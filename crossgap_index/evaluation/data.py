"""Labelled data for ``cgx eval``: a class-per-subfolder image folder, a caption jsonl, or the synthetic world.

Forms of the dataset argument:
  * a folder with one subfolder per class (image-to-image, relevant = same class); the class name is
    the subfolder name with ``_`` read as a space. A ``captions.jsonl`` at its top (the layout that
    ``crossgap_index.datasets.synthetic.export_folder`` writes) adds the text-to-text task;
  * a ``.jsonl`` file of ``{"text", "group", "label"?}`` lines (text-to-text): each group's first
    caption is a query, its other captions are gallery items, relevant = same group;
  * ``synthetic:SEED:N``: N items of the synthetic world, generated in memory, both tasks.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossgap_index.datasets.synthetic import CLASS_NAMES, generate
from crossgap_index.errors import InputFileError
from crossgap_index.ingest.decode import content_hash
from crossgap_index.ingest.discover import SKIPPED_DIRS, find_images, is_image_path
from crossgap_index.ingest.texts import read_utf8_lines

SYNTHETIC_PREFIX = "synthetic:"
CAPTIONS_FILE = "captions.jsonl"
_SUBSAMPLE_SEED = 0  # --limit picks the same items on every run


@dataclass(frozen=True)
class ImageSet:
    """Images (a file path, or encoded bytes held in memory) with an integer class label each."""

    items: list[Path | bytes]
    labels: np.ndarray
    class_names: list[str]

    def read(self, i: int) -> bytes:
        item = self.items[i]
        if isinstance(item, bytes):
            return item
        try:
            return item.read_bytes()
        except OSError as exc:
            raise InputFileError(f"cannot read {item}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class TextSet:
    """Text-to-text: one query per group, the group's other captions in the gallery."""

    query_texts: list[str]
    query_groups: np.ndarray
    gallery_texts: list[str]
    gallery_groups: np.ndarray
    labels: list[str]  # distinct labels given with the captions (a default span vocabulary); may be empty


@dataclass(frozen=True)
class CaptionLinks:
    """Text-to-image: every caption that names an image class (``relevant`` = "same class") or, when the
    captions carry no labels, its own image (``relevant`` = "same item": its group is the image's file stem,
    or the item's position for the synthetic world). ``labels``: per caption, the class index or item code."""

    texts: list[str]
    labels: np.ndarray
    relevant: str
    item_codes: dict[str, int] = field(default_factory=dict)  # image content hash -> item code ("same item")

    def image_labels(self, class_labels: np.ndarray, digests: Sequence[str]) -> np.ndarray:
        """The evaluated images' labels in this task's terms (their class, or their item code; -1: no caption)."""
        if self.relevant == "same class":
            return class_labels
        return np.array([self.item_codes.get(d, -1) for d in digests], np.int64)


@dataclass
class EvalDataset:
    """What ``evaluate`` runs on; ``notes`` says what was left out of the input and why.
    ``captions``: every (text, group, label) read, for text-to-image."""

    spec: str
    kind: str  # "folder" | "jsonl" | "synthetic"
    images: ImageSet | None
    texts: TextSet | None
    notes: list[str] = field(default_factory=list)
    captions: list[tuple[str, str, str | None]] = field(default_factory=list)

    def caption_image_labels(self) -> CaptionLinks:
        """How captions relate to the images (see CaptionLinks); one line when they do not."""
        if self.images is None or not self.captions:
            raise InputFileError(f"text-to-image evaluation needs images and captions; {self.spec} lacks one")
        index = {name: i for i, name in enumerate(self.images.class_names)}
        labelled = [(text, index[label]) for text, _, label in self.captions if label in index]
        if labelled:
            return CaptionLinks([t for t, _ in labelled], np.array([c for _, c in labelled], np.int64), "same class")
        stems = {_item_key(item, i): i for i, item in enumerate(self.images.items)}
        linked = [(text, stems[group]) for text, group, _ in self.captions if group in stems]
        if not linked:
            raise InputFileError(
                f"{self.spec}: no caption names an image class (label) or an image (group = file name stem)"
            )
        codes = {content_hash(self.images.read(i)): i for i in sorted({c for _, c in linked})}
        return CaptionLinks([t for t, _ in linked], np.array([c for _, c in linked], np.int64), "same item", codes)

    @property
    def class_names(self) -> list[str]:
        """The default concept vocabulary: image class names, else the captions' labels."""
        if self.images is not None:
            return self.images.class_names
        return self.texts.labels if self.texts is not None else []

    def describe(self) -> dict:
        doc: dict = {"spec": self.spec, "kind": self.kind}
        if self.images is not None:
            doc["images"] = len(self.images.items)
            doc["classes"] = len(self.images.class_names)
        if self.texts is not None:
            doc["text_queries"] = len(self.texts.query_texts)
            doc["text_gallery"] = len(self.texts.gallery_texts)
        doc["notes"] = list(self.notes)
        return doc


def load_dataset(spec: str, limit: int | None = None) -> EvalDataset:
    """Parse a dataset argument; ``limit`` keeps a fixed random subset of N images and N text groups."""
    if limit is not None and limit < 2:
        raise InputFileError(f"--limit must be at least 2, got {limit}")
    if spec.startswith(SYNTHETIC_PREFIX):
        return _synthetic(spec, limit)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder(spec, path, limit)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        texts, notes, _ = _caption_file(path, limit)
        return EvalDataset(spec, "jsonl", None, texts, notes)
    if path.exists():
        raise InputFileError(f"{path}: expected a folder with one subfolder per class, or a .jsonl caption file")
    raise InputFileError(
        f"no such dataset '{spec}': give a folder with one subfolder per class, a .jsonl caption file, "
        "or synthetic:SEED:N"
    )


def read_vocab(path: str | Path) -> list[str]:
    """Concept names for span projection: one per line, blank lines skipped, duplicates kept once."""
    path = Path(path).expanduser()
    lines = read_utf8_lines(path, "vocabulary ")
    names = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if len(names) < 2:
        raise InputFileError(f"vocabulary {path} needs at least 2 names (one per line), found {len(names)}")
    return names


def _synthetic(spec: str, limit: int | None) -> EvalDataset:
    parts = spec[len(SYNTHETIC_PREFIX) :].split(":")
    try:
        seed, n = (int(p) for p in parts)
    except ValueError:
        raise InputFileError(f"bad synthetic dataset '{spec}': use synthetic:SEED:N, e.g. synthetic:1001:480") from None
    if seed < 0 or n < 2:
        raise InputFileError(f"bad synthetic dataset '{spec}': SEED must be >= 0 and N >= 2")
    items = generate(seed, n)
    keep = _subsample(n, limit)
    encoded = [_png(items[i].image) for i in keep]
    images = _image_set(encoded, [items[i].class_name for i in keep], CLASS_NAMES)
    records = [(text, i, items[i].class_name) for i in keep for text in items[i].captions]
    texts, notes = _text_set(records, None, spec)
    return EvalDataset(spec, "synthetic", images, texts, notes, [(t, str(g), label) for t, g, label in records])


def _folder(spec: str, root: Path, limit: int | None) -> EvalDataset:
    notes = []
    classes = sorted(
        d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in SKIPPED_DIRS
    )
    paths, names = [], []
    for folder in classes:
        found = find_images([folder])
        if not found:
            notes.append(f"class folder {folder.name!r} has no images: left out")
        paths += found
        names += [folder.name.replace("_", " ")] * len(found)
    loose = [p for p in root.iterdir() if p.is_file() and is_image_path(p) and not p.name.startswith(".")]
    if loose:
        notes.append(f"{len(loose)} images directly in {root} (outside class folders) left out")
    keep = _subsample(len(paths), limit)
    images = _image_set([paths[i] for i in keep], [names[i] for i in keep], sorted(set(names)), str(root))
    texts, captions = None, []
    if (root / CAPTIONS_FILE).is_file():
        texts, text_notes, captions = _caption_file(root / CAPTIONS_FILE, limit)
        notes += text_notes
    return EvalDataset(spec, "folder", images, texts, notes, captions)


def _image_set(items: list[Path | bytes], names: list[str], class_names: list[str], where: str = "") -> ImageSet:
    present = sorted(set(names))
    if len(present) < 2:
        raise InputFileError(
            f"image-to-image evaluation needs at least 2 classes with images{' in ' + where if where else ''}; "
            f"found {len(present)}"
        )
    index = {name: i for i, name in enumerate(class_names)}
    return ImageSet(items, np.array([index[n] for n in names], np.int64), list(class_names))


def _caption_file(path: Path, limit: int | None) -> tuple[TextSet, list[str], list[tuple]]:
    lines = read_utf8_lines(path)
    records = [_caption_record(line, path, n) for n, line in enumerate(lines, 1) if line.strip()]
    return (*_text_set(records, limit, str(path)), records)


def _item_key(item: Path | bytes, position: int) -> str:
    """What a caption's group names an image by: its file name stem, or (in memory) its position."""
    return item.stem if isinstance(item, Path) else str(position)


def _caption_record(line: str, path: Path, lineno: int) -> tuple[str, str, str | None]:
    where = f"{path}:{lineno}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise InputFileError(f"{where}: expected a JSON object")
    text, group, label = record.get("text"), record.get("group"), record.get("label")
    if not isinstance(text, str) or not text.strip():
        raise InputFileError(f'{where}: missing or empty "text" string')
    if not isinstance(group, (str, int)) or isinstance(group, bool):
        raise InputFileError(f'{where}: "group" must be a string or an integer')
    if label is not None and not isinstance(label, str):
        raise InputFileError(f'{where}: "label" must be a string')
    return text.strip(), str(group), label


def _text_set(records: list[tuple], limit: int | None, where: str) -> tuple[TextSet, list[str]]:
    """Group captions in order of first appearance; groups with a single caption cannot be queried."""
    groups: dict = {}
    for text, group, _ in records:
        groups.setdefault(group, []).append(text)
    usable = [g for g, texts in groups.items() if len(texts) >= 2]
    notes = []
    if len(usable) < len(groups):
        notes.append(f"{len(groups) - len(usable)} caption groups with a single caption left out (nothing to find)")
    usable = [usable[i] for i in _subsample(len(usable), limit)]
    if len(usable) < 2:
        raise InputFileError(f"text-to-text evaluation needs at least 2 groups with 2+ captions in {where}")
    codes = {g: i for i, g in enumerate(usable)}
    gallery = [(text, codes[g]) for g in usable for text in groups[g][1:]]
    # content-hash order (caption + its group's query), so ties between duplicate captions fall the same
    # way whatever the file order: see crossgap_index.evaluation.protocol.TIES
    gallery.sort(key=lambda item: content_hash(f"{item[0]}\n{groups[usable[item[1]]][0]}".encode()))
    labels = sorted({label for _, group, label in records if label is not None and group in codes})
    texts = TextSet(
        query_texts=[groups[g][0] for g in usable],
        query_groups=np.arange(len(usable)),
        gallery_texts=[t for t, _ in gallery],
        gallery_groups=np.array([c for _, c in gallery], np.int64),
        labels=labels,
    )
    return texts, notes


def _subsample(n: int, limit: int | None) -> list[int]:
    """All indices, or a fixed random subset of ``limit`` of them, in their original order."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(np.random.default_rng(_SUBSAMPLE_SEED).choice(n, limit, replace=False).tolist())


def _png(image) -> bytes:
    """The PNG bytes ``export_folder`` would write, so a query's content hash (its seed) matches the file's."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
