"""The file store's failure records: ``<dir>/failures/<key>.json``, written like a result
(temporary file, then rename), one per failed task, removed when the task succeeds."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from ..errors import StoreError
from .base import check_key, is_key

FAILURES_DIR = "failures"
FAILURE_SUFFIX = ".json"


class FileFailureRecords:
    """Mixed into FileStore: ``save_failure``, ``failure_keys``, ``failures``,
    ``clear_failures`` (see Store)."""

    root: str
    fsync: bool

    def _translate(self, e: OSError, needed: int = 0) -> StoreError:
        raise NotImplementedError

    def _ensure_root(self) -> None:
        raise NotImplementedError

    def _tmp_name(self) -> str:
        raise NotImplementedError

    def _failure_path(self, key: str) -> str:
        return os.path.join(self.root, FAILURES_DIR, check_key(key) + FAILURE_SUFFIX)

    def save_failure(self, key: str, record: dict[str, Any]) -> None:
        """Temporary file, then rename: a reader sees the old record or the whole new one."""
        data = json.dumps(record, sort_keys=True).encode()
        final = self._failure_path(key)
        tmp = ""
        try:
            self._ensure_root()
            os.makedirs(os.path.dirname(final), exist_ok=True)
            tmp = self._tmp_name()
            with open(tmp, "xb") as out:
                out.write(data)
                if self.fsync:
                    out.flush()
                    os.fsync(out.fileno())
            os.rename(tmp, final)
            tmp = ""
        except OSError as e:
            raise self._translate(e, len(data)) from e
        finally:
            if tmp:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def failure_keys(self) -> list[str]:
        try:
            names = os.listdir(os.path.join(self.root, FAILURES_DIR))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise self._translate(e) from e
        n = len(FAILURE_SUFFIX)
        return [k[:-n] for k in names if k.endswith(FAILURE_SUFFIX) and is_key(k[:-n])]

    def failures(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        have = self.failure_keys()  # one listing, then only the files that exist
        if keys is not None:
            wanted = {check_key(k) for k in keys}
            have = [k for k in have if k in wanted]
        out: dict[str, dict[str, Any]] = {}
        for key in have:
            try:
                with open(self._failure_path(key), "rb") as f:
                    record = json.loads(f.read())
            except FileNotFoundError:  # cleared meanwhile
                continue
            except ValueError:  # not ours, or damaged: a record is only ever informative
                continue
            except OSError as e:
                raise self._translate(e) from e
            if isinstance(record, dict):
                out[key] = record
        return out

    def clear_failures(self, keys: Sequence[str]) -> int:
        n = 0
        for key in keys:
            try:
                os.unlink(self._failure_path(key))
                n += 1
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as e:
                raise self._translate(e) from e
        return n
