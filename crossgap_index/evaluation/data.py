"""Labelled data for ``cgx eval``: a class-per-subfolder image folder, a caption jsonl, or the synthetic world.

Forms of the dataset argument:
  * a folder with one subfolder per class (image-to-image, relevant = same class); the class name is
    the subfolder name with ``_`` read as a space. A ``captions.jsonl`` at its top (the layout that
    ``crossgap_index.datasets.synthetic.export_folder`` writes) adds the text-to-text task;
  * a ``.jsonl`` file of ``{"text", "group", "label"?}`` lines (text-to-text): each group's first
    caption is a query, its other captions are gallery items, relevant = same group;
  * ``synthetic:SEED:N``: N items of the synthetic world, generated in memory, both tasks. Options may follow,
    ``:vocab=tune|test`` (only that half of the held-out-vocabulary split of the 48 classes occurs: the two
    halves share no class name) and ``:relevance=shape|colour|both`` (the same images, relevant = same shape,
    same colour, or same class), e.g. ``synthetic:7:480:vocab=test:relevance=shape``;
  * ``fashion-mnist:SPLIT[:N][:seed=S]``: Fashion-MNIST's train or test split from Debian's
    ``dataset-fashion-mnist``, or a class-stratified subset of N images drawn with seed S (default 0).
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossgap_index.datasets import fashion_mnist
from crossgap_index.datasets.synthetic import (
    CLASS_NAMES,
    RELEVANCE_AXES,
    VOCAB_SPLITS,
    axis_name,
    axis_names,
    make_item,
    vocabulary_split,
)
from crossgap_index.errors import InputFileError
from crossgap_index.ingest.decode import DEFAULT_MAX_FILE_BYTES, SkippedFile, read_file
from crossgap_index.ingest.discover import SKIPPED_DIRS, file_kind, find_images, is_image_path
from crossgap_index.ingest.jsonl import jsonl_objects
from crossgap_index.ingest.texts import DEFAULT_MAX_TEXT_BYTES, MAX_LINE_CHARS, read_utf8_lines
from crossgap_index.words import content_hash

SYNTHETIC_PREFIX = "synthetic:"
FASHION_PREFIX = "fashion-mnist:"
_RELEVANT = {"shape": "same shape", "colour": "same colour", "both": "same colour and shape"}
CAPTIONS_FILE = "captions.jsonl"
MAX_SYNTHETIC_ITEMS = 100_000  # synthetic:SEED:N; ~10 ms and ~7 kB (PNG) per item here
MAX_VOCAB_MB = 16.0  # a concept list (ImageNet's 1000 names: 12 kB); larger files are refused unread
_SUBSAMPLE_SEED = 0  # --limit picks the same items on every run


StageProgress = Callable[[str, int, int], None]  # progress(stage, done, total)


@dataclass(frozen=True)
class ImageSet:
    """Images (a file path, or encoded bytes held in memory) with an integer class label each."""

    items: list[Path | bytes]
    labels: np.ndarray
    class_names: list[str]
    relevance: str = "same class"  # what makes a gallery image relevant to a query (the task's "relevant")

    def read(self, i: int) -> bytes:
        item = self.items[i]
        if isinstance(item, bytes):
            return item
        try:
            return read_file(item).data  # a regular file within --max-file-mb's default, as build-index reads
        except SkippedFile as exc:
            raise InputFileError(f"cannot read {item}: {exc}") from exc
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
    kind: str  # "folder" | "jsonl" | "synthetic" | "fashion-mnist"
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
            doc["relevance"] = self.images.relevance
        if self.texts is not None:
            doc["text_queries"] = len(self.texts.query_texts)
            doc["text_gallery"] = len(self.texts.gallery_texts)
        doc["notes"] = list(self.notes)
        return doc


def load_dataset(spec: str, limit: int | None = None, progress: StageProgress | None = None) -> EvalDataset:
    """Parse a dataset argument; ``limit`` keeps a fixed random subset of N images and N text groups;
    ``progress(stage, done, total)`` follows the generation of a synthetic set."""
    if limit is not None and limit < 2:
        raise InputFileError(f"--limit must be at least 2, got {limit}")
    if spec.startswith(SYNTHETIC_PREFIX):
        return _synthetic(spec, limit, progress)
    if spec.startswith(FASHION_PREFIX):
        return _fashion(spec, limit)
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
        "synthetic:SEED:N or fashion-mnist:test[:N]"
    )


def read_vocab(path: str | Path) -> list[str]:
    """Concept names for span projection: one per line, blank lines skipped, duplicates kept once."""
    path = Path(path).expanduser()
    lines = read_utf8_lines(path, "vocabulary ", int(MAX_VOCAB_MB * 1e6), "--vocab file")
    long = next((i for i, line in enumerate(lines, 1) if len(line) > MAX_LINE_CHARS), None)
    if long is not None:
        raise InputFileError(f"vocabulary {path}: line {long} is longer than {MAX_LINE_CHARS} characters")
    names = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if len(names) < 2:
        raise InputFileError(f"vocabulary {path} needs at least 2 names (one per line), found {len(names)}")
    return names


SYNTHETIC_USAGE = "use synthetic:SEED:N[:vocab=tune|test][:relevance=shape|colour|both], e.g. synthetic:1001:480"


def synthetic_size(spec: str) -> tuple[int, int]:
    """SEED and N of ``synthetic:SEED:N[:...]``, checked (N capped) before anything is generated or loaded."""
    parts = spec[len(SYNTHETIC_PREFIX) :].split(":")
    try:
        seed, n = (int(p) for p in parts[:2])
    except ValueError:
        raise InputFileError(f"bad synthetic dataset '{spec}': {SYNTHETIC_USAGE}") from None
    if seed < 0 or n < 2:
        raise InputFileError(f"bad synthetic dataset '{spec}': SEED must be >= 0 and N >= 2")
    if n > MAX_SYNTHETIC_ITEMS:
        raise InputFileError(
            f"synthetic dataset '{spec}': N is at most {MAX_SYNTHETIC_ITEMS} (each item is generated and held in "
            "memory); use a smaller N, or --limit with an image folder for larger evaluations"
        )
    return seed, n


def _synthetic(spec: str, limit: int | None, progress: StageProgress | None = None) -> EvalDataset:
    seed, n = synthetic_size(spec)
    parts = spec[len(SYNTHETIC_PREFIX) :].split(":")
    options = _options(spec, parts[2:], {"vocab": VOCAB_SPLITS, "relevance": RELEVANCE_AXES}, SYNTHETIC_USAGE)
    classes = vocabulary_split(options["vocab"]) if "vocab" in options else None
    axis = options.get("relevance")
    keep = _subsample(n, limit)
    report = progress or (lambda stage, done, total: None)
    encoded, class_names, records = [], [], []
    for done, i in enumerate(keep):  # one item at a time: only its PNG bytes and captions are kept
        item = make_item(seed, i, classes)
        encoded.append(_png(item.image))
        class_names.append(item.class_name)
        records += [(text, i, item.class_name) for text in item.captions]
        if done % 64 == 0 or done + 1 == len(keep):
            report("generating synthetic items", done + 1, len(keep))
    world = classes or CLASS_NAMES
    if axis is None:
        images = _image_set(encoded, class_names, world)
    else:
        names = [axis_name(name, axis) for name in class_names]
        images = dataclasses.replace(_image_set(encoded, names, axis_names(axis, world)), relevance=_RELEVANT[axis])
    texts, notes = _text_set(records, None, spec)
    return EvalDataset(spec, "synthetic", images, texts, notes, [(t, str(g), label) for t, g, label in records])


def _fashion(spec: str, limit: int | None) -> EvalDataset:
    """Fashion-MNIST as 28x28 RGB PNGs in memory; image-to-image only (the set has no captions)."""
    usage = "use fashion-mnist:test[:N][:seed=S] or fashion-mnist:train[:N][:seed=S]"
    parts = spec[len(FASHION_PREFIX) :].split(":")
    split, rest = parts[0], parts[1:]
    if split not in fashion_mnist.SPLITS:
        raise InputFileError(f"bad Fashion-MNIST dataset '{spec}': {usage}")
    n = None
    if rest and "=" not in rest[0]:
        try:
            n = int(rest[0])
        except ValueError:
            raise InputFileError(f"bad Fashion-MNIST dataset '{spec}': N must be an integer; {usage}") from None
        if n < 2:
            raise InputFileError(f"bad Fashion-MNIST dataset '{spec}': N must be >= 2")
        rest = rest[1:]
    options = _options(spec, rest, {"seed": None}, usage)
    try:
        seed = int(options.get("seed", 0))
    except ValueError:
        seed = -1
    if seed < 0:
        raise InputFileError(f"bad Fashion-MNIST dataset '{spec}': seed must be an integer >= 0")
    pixels, labels = fashion_mnist.load_split(split)
    chosen = fashion_mnist.stratified_subset(labels, n, seed) if n is not None else np.arange(len(labels))
    keep = chosen[_subsample(len(chosen), limit)]
    encoded = [_png(fashion_mnist.to_rgb(pixels[i])) for i in keep]
    names = fashion_mnist.CLASS_NAMES
    images = _image_set(encoded, [names[labels[i]] for i in keep], names)
    return EvalDataset(spec, "fashion-mnist", images, None, [])


def _options(spec: str, parts: list[str], allowed: dict[str, tuple[str, ...] | None], usage: str) -> dict[str, str]:
    """``key=value`` suffixes of a dataset spec, each key at most once, values from ``allowed`` (None: any)."""
    options: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        choices = allowed.get(key, ())
        if not sep or key not in allowed or key in options or (choices is not None and value not in choices):
            raise InputFileError(f"bad dataset '{spec}': cannot read '{part}'; {usage}")
        options[key] = value
    return options


def _folder(spec: str, root: Path, limit: int | None) -> EvalDataset:
    notes = []
    classes = sorted(
        d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in SKIPPED_DIRS
    )
    paths, names = [], []
    unreadable: list[str] = []
    for folder in classes:
        found = _regular_files(find_images([folder]), unreadable)
        if not found:
            notes.append(f"class folder {folder.name!r} has no images: left out")
        paths += found
        names += [folder.name.replace("_", " ")] * len(found)
    if unreadable:
        shown = ", ".join(unreadable[:3]) + (f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else "")
        notes.append(f"{len(unreadable)} image files left out, as build-index leaves them out: {shown}")
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


def _regular_files(paths: list[Path], unreadable: list[str]) -> list[Path]:
    """The paths that are regular files within the size cap (a FIFO would hang the evaluation, a link to
    /dev/zero would fill memory); each other one is added to ``unreadable`` with its reason."""
    kept = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as exc:
            unreadable.append(f"{path.name} ({exc.strerror or exc})")
            continue
        if not stat.S_ISREG(info.st_mode):
            unreadable.append(f"{path.name} (not a regular file: {file_kind(info.st_mode)})")
        elif info.st_size > DEFAULT_MAX_FILE_BYTES:
            unreadable.append(f"{path.name} ({info.st_size / 1e6:.0f} MB, over {DEFAULT_MAX_FILE_BYTES / 1e6:g} MB)")
        else:
            kept.append(path)
    return kept


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
    records = [_caption_record(record, f"{path}:{n}") for n, record in jsonl_objects(path, DEFAULT_MAX_TEXT_BYTES)]
    return (*_text_set(records, limit, str(path)), records)


def _item_key(item: Path | bytes, position: int) -> str:
    """What a caption's group names an image by: its file name stem, or (in memory) its position."""
    return item.stem if isinstance(item, Path) else str(position)


def _caption_record(record: dict, where: str) -> tuple[str, str, str | None]:
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
