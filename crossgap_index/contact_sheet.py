"""Contact sheets: a query image beside its top hits, one row per retrieval mode."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from crossgap_index.ingest.decode import decode_rgb

GOOD, BAD, NEUTRAL = (40, 160, 60), (200, 50, 50), (150, 150, 150)


def contact_sheet(
    query: Path,
    rows: dict[str, Sequence[Path]],
    out: Path,
    tile: int = 96,
    label_of=None,
) -> Path:
    """Write a PNG: the query, then each mode's hits. With ``label_of(path) -> str``, hits sharing the
    query's label get a green frame and the others a red one, so a glance shows which mode did better."""
    columns = 1 + max((len(hits) for hits in rows.values()), default=0)
    pad, caption = 6, 16
    width = pad + columns * (tile + pad) + 90
    height = pad + len(rows) * (tile + caption + pad)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    query_label = label_of(query) if label_of else None
    for r, (mode, hits) in enumerate(rows.items()):
        y = pad + r * (tile + caption + pad)
        draw.text((pad, y + tile // 2), mode, fill=(0, 0, 0))
        _paste(sheet, draw, query, 90, y, tile, NEUTRAL, "query")
        for c, hit in enumerate(hits, 1):
            label = label_of(hit) if label_of else None
            colour = NEUTRAL if query_label is None else GOOD if label == query_label else BAD
            _paste(sheet, draw, hit, 90 + c * (tile + pad), y, tile, colour, f"{c}. {label or hit.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def _paste(
    sheet: Image.Image,
    draw: ImageDraw.ImageDraw,
    path: Path,
    x: int,
    y: int,
    tile: int,
    frame: tuple[int, int, int],
    text: str,
) -> None:
    thumb = ImageOps.fit(decode_rgb(path.read_bytes()), (tile - 6, tile - 6))
    draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=frame)
    sheet.paste(thumb, (x + 3, y + 3))
    draw.text((x, y + tile + 2), text[:16], fill=(0, 0, 0))


def group_sheet(groups: Sequence[Sequence[tuple[int, Path]]], out: Path, tile: int = 96) -> Path:
    """Write a PNG with one row per group of (id, image path), e.g. near-duplicates (``cgx duplicates --sheet``).
    A file that can no longer be read as an image (moved, changed, not a regular file) shows as a grey tile."""
    columns = max((len(group) for group in groups), default=0)
    pad, caption = 6, 16
    width = pad + max(columns, 1) * (tile + pad) + 40
    height = pad + max(len(groups), 1) * (tile + caption + pad)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, group in enumerate(groups):
        y = pad + r * (tile + caption + pad)
        draw.text((pad, y + tile // 2), f"{r + 1}", fill=(0, 0, 0))
        for c, (item_id, path) in enumerate(group):
            x = 40 + c * (tile + pad)
            draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=NEUTRAL)
            thumb = _thumbnail(Path(path), tile - 6)
            if thumb is not None:
                sheet.paste(thumb, (x + 3, y + 3))
            draw.text((x, y + tile + 2), f"{item_id} {Path(path).name}"[:16], fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def _thumbnail(path: Path, side: int) -> Image.Image | None:
    from crossgap_index.ingest.decode import DecodeError, SkippedFile, read_file

    try:
        return ImageOps.fit(decode_rgb(read_file(path).data), (side, side))
    except (OSError, SkippedFile, DecodeError):
        return None
