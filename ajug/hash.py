"""jug's ``jug.hash`` names (``hash_one``, ``hash_update``, ``new_hash_object``), for jugfiles
and ``__jug_hash__`` methods that import them from there."""

from __future__ import annotations

from .hashing import hash_one, hash_update, new_hash_object

__all__ = ["hash_one", "hash_update", "new_hash_object"]
