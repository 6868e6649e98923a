"""Writing results out of the store, and NoLoad (pass a task, not its result, to a task)."""

from __future__ import annotations

from typing import Any

from .task import Task, TaskGenerator, Tasklet

__all__ = ["NoLoad", "write_task_out", "write_metadata"]


class NoLoad(Tasklet):
    """Wraps a task so that the function receives the task itself and loads it when it wants.

    ``value(NoLoad(t))`` is the NoLoad; inside the function, ``value(arg.base)`` loads the
    result, from wherever the function runs.
    """

    _ajug_noload = True  # barriers do not wait for its task (ajug.walk)

    def __init__(self, base: Any) -> None:
        Tasklet.__init__(self, base, "NoLoad")

    @property
    def t(self) -> Any:
        return self.base

    def __getitem__(self, _: Any) -> Any:
        raise NotImplementedError("you cannot slice a NoLoad object")

    def __jug_value__(self) -> Any:
        return self


def _describe(t: Any) -> Any:
    if isinstance(t, Task):
        d: dict[str, Any] = {"name": t.name}
        if t.args:
            d["args"] = [_describe(a) for a in t.args]
        if t.kwargs:
            d["kwargs"] = {k: _describe(v) for k, v in t.kwargs.items()}
        if Task.store is not None:
            meta = Task.store.metadata([t.key])[0]
            if meta is not None:
                d["meta"] = meta
        return d
    if isinstance(t, Tasklet):
        return {"name": "tasklet", "operation": repr(t.f), "base": _describe(t.base)}
    if isinstance(t, (list, tuple)):
        return [_describe(x) for x in t]
    if isinstance(t, dict):
        return {k: _describe(v) for k, v in t.items()}
    return t


@TaskGenerator
def _do_write_task_out(
    result_value: Any,
    result: Any,
    oname: str | None,
    metadata_fname: str | None = None,
    metadata_format: str = "yaml",
) -> None:
    if metadata_fname is not None:
        description = _describe(result.base)
        with open(metadata_fname, "w") as out:
            fmt = metadata_format.lower()
            if fmt == "yaml":
                import yaml

                yaml.dump(description, out)
            elif fmt == "json":
                import json

                json.dump(description, out, default=repr)
            else:
                raise ValueError(f"unknown metadata format {metadata_format!r} (yaml or json)")
    if oname is None:
        return
    np: Any
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    with open(oname, "wb") as out:
        if np is not None and isinstance(result_value, np.ndarray):
            np.save(out, result_value)
        else:
            import pickle

            pickle.dump(result_value, out)


# jug's name, so that the task's identity (and a jug project's stored result) is jug's
_do_write_task_out.f.__jug_name__ = "jug.io._do_write_task_out"


def write_task_out(
    result: Task, oname: str, metadata_fname: str | None = None, metadata_format: str = "yaml"
) -> Task:
    """A task that writes ``result``'s value to ``oname`` (``.npy`` for arrays, else pickle)."""
    return _do_write_task_out(result, NoLoad(result), oname, metadata_fname, metadata_format)


def write_metadata(result: Task, metadata_fname: str, metadata_format: str = "yaml") -> Task:
    """A task that writes a description of how ``result`` was computed."""
    return _do_write_task_out(result, NoLoad(result), None, metadata_fname, metadata_format)
