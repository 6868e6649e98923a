"""A task's traceback points at the user's file and shows its lines, as Python prints them,
wherever the worker ran.

Two things stood in the way. cloudpickle rebuilds the code of a function sent by value with
``co_filename = "<dynamic-code>"`` (to make its payload independent of where the function was
defined), so every frame of a jugfile's function read ``File "<dynamic-code>", line 8``. And a
worker on another machine has no copy of the jugfile, so ``linecache`` finds no source line to
show even with the right file name.

So the coordinator pickles code objects itself (``reduce_code``, used by the function pickler in
``ajug.graph``): the code as ``marshal`` keeps it, file name included, with the source lines
that the code spans. The worker rebuilds the code unchanged and, if that file does not exist on
its machine, hands the lines to ``linecache`` (an entry without a modification time, which
``linecache.checkcache`` leaves alone, as it does for modules loaded by a ``__loader__``).
Where the file exists, Python reads it, as it would for any traceback.
"""

from __future__ import annotations

import linecache
import marshal
import os
import traceback
import types
from typing import Any

#: (file name, first line number, lines from there on) for the code objects of one function
Source = tuple[str, int, list[str]]

_WORKER_FILES: set[str] = set()


def _span(code: types.CodeType) -> tuple[int, int]:
    """The first and last line of ``code`` and of the code nested in it (lambdas, inner
    functions, comprehensions)."""
    first = last = code.co_firstlineno
    stack = [code]
    while stack:
        c = stack.pop()
        for _start, _end, line in c.co_lines():
            if line is not None:
                first, last = min(first, line), max(last, line)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return first, last


def source_of(code: types.CodeType) -> Source | None:
    """The source lines ``code`` spans, from this machine's copy of its file (None if none)."""
    filename = code.co_filename
    if not filename or filename.startswith("<"):
        return None
    lines = linecache.getlines(filename)
    if not lines:
        return None
    first, last = _span(code)
    return filename, first, lines[first - 1 : last]


def reduce_code(code: types.CodeType) -> Any:
    """A pickle reduction of ``code`` that keeps its file name and carries its source lines
    (``NotImplemented``: not a code object marshal can write; the caller's default applies)."""
    try:
        data = marshal.dumps(code)
    except ValueError:
        return NotImplemented
    return load_code, (data, source_of(code))


def load_code(data: bytes, source: Source | None) -> types.CodeType:
    """The worker's side of ``reduce_code``: the code as it was, its lines known to linecache."""
    code = marshal.loads(data)
    if source is not None:
        remember_source(*source)
    return code


def remember_source(filename: str, first: int, lines: list[str]) -> None:
    """Give linecache these lines of ``filename`` unless the file is on this machine."""
    if os.path.exists(filename):
        return
    entry = linecache.cache.get(filename)
    known: list[str] = list(entry[2]) if entry is not None and len(entry) == 4 else []
    end = first - 1 + len(lines)
    if len(known) < end:
        known.extend("\n" for _ in range(end - len(known)))
    known[first - 1 : end] = [ln if ln.endswith("\n") else ln + "\n" for ln in lines]
    linecache.cache[filename] = (sum(map(len, known)), None, known, filename)


def worker_file(path: str) -> None:
    """Frames of this file (the worker's own loop) are left out of task tracebacks."""
    _WORKER_FILES.add(os.path.abspath(path))


def format_task_traceback(e: BaseException) -> str:
    """``e``'s traceback as Python prints it, from the task's own code on: the frames of the
    worker that called the task are not the user's business."""
    tb = e.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) in _WORKER_FILES:
        tb = tb.tb_next
    if tb is None:  # it was the worker's own code that raised: show all of it
        tb = e.__traceback__
    return "".join(traceback.format_exception(type(e), e, tb))
