"""Imported rows made unit length (inner product = cosine) for the shards, without changing a row that
already is: float16 rows within float16's roundoff of unit norm are stored as given, so export -> import
is exact. ``unit_rows`` is the straightforward float32 path; ``unit_rows_as`` its float16 fast path, tested
against it (tests/test_import_bulk.py).
"""

from __future__ import annotations

import functools

import numpy as np

from crossgap_index.errors import InputFileError

# A row whose norm is within this of 1 is stored as given. Re-normalising it would move each element by
# about one step of its type (float16's unit roundoff is 2**-11; float32 rows this close to unit norm move
# by an ulp or two), a change a search cannot see, and keeping them makes export -> import exact. `cgx
# check` flags norms off by more than 1e-3. Rows further off are normalised.
HALF_UNIT_TOLERANCE = 2.0**-11
FLOAT_UNIT_TOLERANCE = 2.0**-20
# float32 norms in this range are exact enough to normalise by (no square underflowed to 0 or overflowed to
# inf on the way); a row outside it has its norm taken again in float64.
EXACT_NORMS = (1e-15, 1e15)
_NORM_CHUNK = 1024  # rows per step of the float16 norms (their squares stay in cache)


def unit_rows(vectors: np.ndarray, first_row: int, name: str) -> np.ndarray:
    """Rows scaled to unit length (inner product = cosine), as a new float32 array; rows within
    FLOAT_UNIT_TOLERANCE of unit norm are kept as given. A row is refused only when its norm, taken in
    float64, is 0 or not finite: a row of 1e-30s is a direction like any other. Norms are taken in float32
    first (five times faster), and again in float64 for the rows whose float32 squares may have underflowed
    or overflowed (norms outside EXACT_NORMS)."""
    out = np.array(vectors, np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    extreme = ~((norms > EXACT_NORMS[0]) & (norms < EXACT_NORMS[1]))
    wide = out[extreme].astype(np.float64)
    wide_norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))
    bad = ~np.isfinite(wide_norms) | (wide_norms == 0)
    if bad.any():
        row = first_row + int(np.flatnonzero(extreme)[np.flatnonzero(bad)[0]])
        raise InputFileError(f"{name}: row {row} is all zeros or holds a value that is not finite (inf, nan)")
    off = np.abs(norms - 1.0) > FLOAT_UNIT_TOLERANCE
    off &= ~extreme
    if off.all():
        out /= norms[:, None]
    elif off.any():
        out[off] /= norms[off, None]
    if extreme.any():
        out[extreme] = (wide / wide_norms[:, None]).astype(np.float32)
    return out


def unit_rows_as(vectors: np.ndarray, dtype: np.dtype, first_row: int, name: str) -> np.ndarray:
    """``unit_rows`` in the shards' ``dtype``, without its float32 round trip where it changes nothing:
    float16 rows for float16 shards keep their values when their norm is within HALF_UNIT_TOLERANCE of 1
    (the norms come from a table of every float16's square, a chunk of rows at a time); the rows off by
    more, and every other dtype pairing, are what ``unit_rows`` makes, cast to ``dtype``."""
    if vectors.dtype != np.float16 or np.dtype(dtype) != np.float16:
        return unit_rows(vectors, first_row, name).astype(dtype, copy=False)
    vectors = np.ascontiguousarray(vectors)
    norms = _half_norms(vectors)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        first_bad = int(np.flatnonzero(bad)[0])
        unit_rows(vectors[first_bad : first_bad + 1], first_row + first_bad, name)  # raises its one-line error
    off = np.flatnonzero(np.abs(norms - 1.0) > HALF_UNIT_TOLERANCE)
    if len(off):
        vectors = vectors.copy()  # the source's array may be read-only (a file's buffer, an Arrow buffer)
        vectors[off] = unit_rows(vectors[off], first_row, name).astype(np.float16)
    return vectors


def _half_norms(vectors: np.ndarray) -> np.ndarray:
    """Euclidean norms of float16 rows, summed in float32 (as ``unit_rows`` does after converting), without
    converting the rows: each element's square is looked up by its 16 bits."""
    squares = _half_squares()
    bits = vectors.view(np.uint16)
    sums = np.empty(len(vectors), np.float32)
    step = np.empty((min(_NORM_CHUNK, len(vectors)), vectors.shape[1]), np.float32)  # reused: stays in cache
    for first in range(0, len(vectors), _NORM_CHUNK):
        chunk = bits[first : first + _NORM_CHUNK]
        np.take(squares, chunk, out=step[: len(chunk)])
        np.sum(step[: len(chunk)], axis=1, out=sums[first : first + len(chunk)])
    return np.sqrt(sums)


@functools.cache
def _half_squares() -> np.ndarray:
    """float32 square of each of the 65,536 float16 bit patterns (inf and nan square to inf and nan)."""
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        return values * values
