"""jug's ``jug.jug`` names that jugfiles and scripts import (``init``, ``is_jug_running``)."""

from __future__ import annotations

from . import init
from .barrier import BarrierError
from .jugfile import is_jug_running

__all__ = ["BarrierError", "init", "is_jug_running"]
