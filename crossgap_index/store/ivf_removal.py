"""Removing vectors from IDMap2 over an IVF index, and checking a saved one's list entries.

IDMap2 keeps the ids in a table by position and the wrapped index numbers its vectors by position. FAISS's
``IndexIDMap2.remove_ids`` closes the gaps in the table, which is right only when the wrapped index closes
them too: flat code arrays (Flat, PQ, SQ) do; IVF lists keep the positions they were added under. So an IVF
removes by position in its lists and renumbers their entries (``remove_from_ivf``). A saved IVF whose list
entries are not exactly the positions 0..n-1 (written by a version that removed through IDMap2) is refused
when read and rebuilt (``ivf_position_problem``).
"""

from __future__ import annotations

import faiss
import numpy as np

from crossgap_index.store.faiss_build import ivf_of

_MISNUMBERED = (
    "its IVF lists do not hold each vector under its own position (a removal by an earlier version moved "
    "ids onto other items' vectors)"
)


def ivf_position_problem(index: faiss.Index) -> str | None:
    """For IDMap2 over an IVF: whether the lists' entries are exactly the positions 0..n-1 of the id table,
    each once (what IDMap2 needs to name each vector's id); None when they are, or the index is no IVF.
    One pass over the lists' ids: O(n) time, 8 bytes per vector."""
    ivf = ivf_of(index)
    if ivf is None:
        return None
    n = int(index.ntotal)
    sizes = [ivf.invlists.list_size(number) for number in range(ivf.nlist)]
    if int(ivf.ntotal) != n or sum(sizes) != n:
        return _MISNUMBERED
    held = np.empty(n, np.int64)
    filled = 0
    for number, size in enumerate(sizes):
        if size:
            held[filled : filled + size] = faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size)
            filled += size
    if n and (held.min() < 0 or held.max() >= n or np.bincount(held, minlength=n).max() != 1):
        return _MISNUMBERED
    return None


def remove_from_ivf(index: faiss.IndexIDMap2, ids: np.ndarray) -> bool:
    """Remove ``ids`` from IDMap2 over an in-memory IVF, keeping each remaining id on its own vector: the
    lists drop the removed positions, then every entry is renumbered to its position in the shortened id
    table (the position minus the removed positions below it), as IDMap2 shortens the table. False (nothing
    changed) for lists this cannot renumber in place (not plain arrays, or a direct map to keep): rebuild."""
    ivf = ivf_of(index)
    if not isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.ArrayInvertedLists):
        return False
    if ivf.direct_map.type != faiss.DirectMap.NoMap:
        return False
    table = faiss.vector_to_array(index.id_map)
    gone = np.isin(table, ids)
    if not gone.any():
        return True
    positions = np.ascontiguousarray(np.flatnonzero(gone), np.int64)
    try:
        index.index.remove_ids(faiss.IDSelectorBatch(len(positions), faiss.swig_ptr(positions)))
    except RuntimeError:  # an IVF type that cannot remove refuses before it changes anything
        return False
    renumbered = np.cumsum(~gone) - 1
    for number in range(ivf.nlist):
        size = ivf.invlists.list_size(number)
        if size:
            held = faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size)  # the list's own (writable) array
            held[:] = renumbered[held]
    kept = table[~gone]
    faiss.copy_array_to_vector(kept, index.id_map)
    index.ntotal = len(kept)
    index.construct_rev_map()
    return True
