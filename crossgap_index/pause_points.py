"""Named points where a test holds this process, to kill it there (tests only; nothing is read unless set).

``CGX_TEST_PAUSE_AT=<point>:<n>:<fifo>``: the ``n``-th time the process reaches ``pause_point(<point>)`` it opens
``fifo`` for reading and reads it to its end. Opening blocks until the test opens the FIFO for writing, so the
test knows the process is at that point the moment its own open returns; it then kills the process there (or
closes its end to let it go on). A killed writer is caught where the test says, however busy the machine.
"""

from __future__ import annotations

import os

PAUSE_ENV = "CGX_TEST_PAUSE_AT"
_reached: dict[str, int] = {}


def pause_point(name: str) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    point, count, fifo = spec.split(":", 2)
    if point != name:
        return
    _reached[spec] = _reached.get(spec, 0) + 1  # by the whole setting: each FIFO counts its own arrivals
    if _reached[spec] == int(count):
        with open(fifo, "rb") as held:
            held.read()
