"""What a task needs and how long it may take: resources, timeout, retries, priority.

None of it is part of a task's identity (jug's identities, and results stored under them, stay
valid when options change). Options are set per TaskGenerator function and may be overridden
per task::

    @TaskGenerator(resources={"gpus": 1, "memory": "16GiB"}, timeout=3600, retries=1)
    def train(data): ...

    quick = train.options(priority=10)(small)      # this call only
    t = train(big).set_options(timeout=7200)        # this task only

- ``resources``: named quantities the task holds while it runs: ``cpus``, ``memory`` (bytes, or
  a string such as ``"64GiB"``), ``gpus``, or any name a worker declares (``ajug work
  --resources licence=1``). A task is leased only to a host that offers all of them, and a host
  never runs more at once than it offers.
- ``timeout``: seconds the task may run; past it the worker process is stopped (and replaced),
  and the task fails with kind ``timeout`` and the stack it was in.
- ``retries``: times a task that raised (or timed out) is run again; overrides ``--retries``.
- ``priority``: among ready tasks, higher first (default 0); ties keep graph order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TaskOptions", "make_options", "parse_quantity", "parse_resources"]

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2,
          "gib": 1024**3, "tib": 1024**4}
_QUANTITY = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


def parse_quantity(name: str, value: Any) -> float:
    """A resource amount: a number, or (for any resource, usually ``memory``) a string with a
    unit: ``"64GiB"``, ``"500MB"``, ``"2"``. Raises ValueError saying what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"resource {name}: {value!r} is not an amount")
    if isinstance(value, (int, float)):
        q = float(value)
    elif isinstance(value, str):
        m = _QUANTITY.fullmatch(value)
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise ValueError(f"resource {name}: {value!r} is not an amount (write e.g. 2, 0.5, "
                             "64GiB or 500MB)")
        q = float(m.group(1)) * _UNITS[unit]
    else:
        raise ValueError(f"resource {name}: {value!r} is not an amount")
    if not math.isfinite(q) or q < 0:
        raise ValueError(f"resource {name}: {value!r} must be a finite amount of at least 0")
    return q


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"resource name {name!r}: use letters, digits, '_', '.' or '-'")
    return name


def parse_resources(text: str) -> dict[str, float]:
    """``"gpus=2,memory=64GiB,licence=1"`` (what ``ajug work --resources`` takes)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, amount = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r}: write NAME=AMOUNT, e.g. gpus=2 or memory=64GiB")
        out[_check_name(name.strip())] = parse_quantity(name.strip(), amount.strip())
    return out


@dataclass(frozen=True)
class TaskOptions:
    """Options of one task (or one function's default). ``None`` means "not set here"."""

    resources: tuple[tuple[str, float], ...] = field(default=())
    timeout_s: float | None = None
    retries: int | None = None
    priority: int | None = None

    def merged(self, override: TaskOptions | None) -> TaskOptions:
        """``override``'s settings over these (resources name by name)."""
        if override is None:
            return self
        res = dict(self.resources)
        res.update(override.resources)
        return TaskOptions(
            tuple(sorted(res.items())),
            override.timeout_s if override.timeout_s is not None else self.timeout_s,
            override.retries if override.retries is not None else self.retries,
            override.priority if override.priority is not None else self.priority,
        )

    def needs(self) -> dict[str, float]:
        """The resources with a positive amount (what a host must offer)."""
        return {k: v for k, v in self.resources if v > 0}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.resources:
            out["resources"] = dict(self.resources)
        if self.timeout_s is not None:
            out["timeout"] = self.timeout_s
        if self.retries is not None:
            out["retries"] = self.retries
        if self.priority is not None:
            out["priority"] = self.priority
        return out


NO_OPTIONS = TaskOptions()


def make_options(resources: Mapping[str, Any] | None = None, timeout: float | None = None,
                 retries: int | None = None, priority: int | None = None) -> TaskOptions:
    """Checked options; ValueError (TypeError for wrong types) says what is wrong."""
    res: dict[str, float] = {}
    if resources is not None:
        if not isinstance(resources, Mapping):
            raise TypeError(f"resources must be a dict such as {{'gpus': 1}}, not {resources!r}")
        for k, v in resources.items():
            res[_check_name(k)] = parse_quantity(k, v)
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout {timeout!r}: must be a positive number of seconds")
    if retries is not None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries {retries!r}: must be a whole number of at least 0")
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be a whole number, not {priority!r}")
        if not -(2**31) <= priority < 2**31:
            raise ValueError(f"priority {priority}: out of range")
    return TaskOptions(tuple(sorted(res.items())),
                       None if timeout is None else float(timeout), retries, priority)
