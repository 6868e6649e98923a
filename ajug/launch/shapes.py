"""Jobs sized for what waiting tasks need: from a task's resources to the job a batch system is
asked for, and the offer its worker declares so that the coordinator leases those tasks to it.
No I/O.

A *shape* starts from the run's job (``--job-cpus``, ``--job-mem``) and grows to hold one task:
CPUs at least the task's ``cpus`` (rounded up), memory at least its ``memory``, GPUs its
``gpus`` (rounded up). Any other resource (``licence``, ``scratch``) gets no directive, since
only the site knows how its scheduler names it (``--job-directive``); the job's worker offers
the amount the task needs, so that the task runs there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..hostpool import describe
from .policy import ShapeDemand
from .systems import JobSpec

MIB = 1024 ** 2
#: what the batch systems are asked for directly; other names are offered, never requested
REQUESTED = ("cpus", "memory", "gpus")


@dataclass(frozen=True)
class Shape:
    """One job's size for tasks of one set of needs."""

    needs: tuple[tuple[str, float], ...]
    cpus: int
    mem_mib: int | None
    gpus: int
    other: tuple[tuple[str, float], ...]

    @property
    def key(self) -> str:
        """A name for the shape, usable in file names: ``cpus2-mem4096M-gpus1``."""
        parts = [f"cpus{self.cpus}"]
        if self.mem_mib:
            parts.append(f"mem{self.mem_mib}M")
        if self.gpus:
            parts.append(f"gpus{self.gpus}")
        parts += [f"{k}{v:g}" for k, v in self.other]
        return "-".join(parts)

    @property
    def what(self) -> str:
        """What its tasks need, as status says it: ``gpus>=1, memory>=64 GiB``."""
        return describe(dict(self.needs))

    def offer(self) -> dict[str, float]:
        """What the job's worker declares (``ajug work --resources``)."""
        out: dict[str, float] = {"cpus": float(self.cpus)}
        if self.mem_mib:
            out["memory"] = float(self.mem_mib * MIB)
        if self.gpus:
            out["gpus"] = float(self.gpus)
        out.update(self.other)
        return out

    def offer_text(self) -> str:
        parts = [f"cpus={self.cpus}"]
        if self.mem_mib:
            parts.append(f"memory={self.mem_mib}MiB")
        if self.gpus:
            parts.append(f"gpus={self.gpus}")
        parts += [f"{k}={v:g}" for k, v in self.other]
        return ",".join(parts)

    def per_job(self) -> int:
        """How many of its tasks one job holds at once: the offer divided by the need (and no
        more than the job's worker processes, one per CPU), at least 1."""
        offer = self.offer()
        fit = min((int(offer.get(k, 0.0) / v + 1e-9) for k, v in self.needs), default=1)
        return max(1, min(self.cpus, fit))

    def spec(self, base: JobSpec) -> JobSpec:
        """The run's job spec, resized for this shape."""
        return dataclasses.replace(base, cpus=self.cpus, mem_mib=self.mem_mib, gpus=self.gpus,
                                   resources=self.offer_text())


def shape_for(needs: Mapping[str, float], cpus: int = 1, mem_mib: int | None = None) -> Shape:
    """The job for tasks needing ``needs``, from the run's ``cpus`` and ``mem_mib`` per job."""
    want_cpus = needs.get("cpus", 0.0)
    want_mem = needs.get("memory", 0.0)
    if want_mem > 0:
        mem_mib = max(mem_mib or 0, math.ceil(want_mem / MIB - 1e-9))
    return Shape(
        needs=tuple(sorted((k, float(v)) for k, v in needs.items() if v > 0)),
        cpus=max(cpus, math.ceil(want_cpus - 1e-9)),
        mem_mib=mem_mib,
        gpus=math.ceil(needs.get("gpus", 0.0) - 1e-9),
        other=tuple(sorted((k, float(v)) for k, v in needs.items()
                           if k not in REQUESTED and v > 0)),
    )


def demands(waiting: list[tuple[dict[str, float], int, int]], cpus: int,
            mem_mib: int | None) -> tuple[list[ShapeDemand], dict[str, Shape]]:
    """The policy's view of ``Placement.waiting_shapes()``, one ``ShapeDemand`` per job shape
    (needs that round to one shape count together), and the shapes by key."""
    shapes: dict[str, Shape] = {}
    out: dict[str, ShapeDemand] = {}
    for needs, ready, startable in waiting:
        shape = shape_for(needs, cpus, mem_mib)
        sd = out.get(shape.key)
        if sd is None:
            shapes[shape.key] = shape
            out[shape.key] = ShapeDemand(shape.key, ready, startable, shape.per_job(),
                                         shape.what)
        else:
            sd.ready += ready
            sd.startable += startable
            sd.per_job = min(sd.per_job, shape.per_job())
            sd.what += f"; {shape.what}"
    return list(out.values()), shapes
