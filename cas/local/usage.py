"""When each model was last used, for gc's least-recently-used order, without a write on the warm path.

A process's first access to a model creates the model's lease file (see
``leases``); a removal or gc that finds the model unused unlinks that file,
so its mtime says when a process first used the model since.  gc folds
those times into ``<cache>/usage`` (msgpack: root -> seconds) and only then
resets the lease files.  A model's last use is the latest of that record,
its lease file, its snapshot's build and when a version of it was stored,
pulled or pushed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgpack

from ..content.ref import ModelInfo
from ..system.files import atomic_write
from .refs import Refs
from .snapshots import Snapshots

MAX_USAGE_BYTES = 64 << 20


class UsageLog:
    def __init__(self, cache_root: str, refs: Refs, snapshots: Snapshots):
        self._path = Path(cache_root, "usage")
        self._tmp = Path(cache_root, "tmp")
        self._refs, self._snapshots = refs, snapshots

    def recorded(self) -> dict[str, float]:
        """The times gc recorded; a missing or damaged record is empty (it only orders evictions)."""
        try:
            with open(self._path, "rb") as f:
                data = msgpack.unpackb(f.read(MAX_USAGE_BYTES), raw=False)
        except (OSError, ValueError, msgpack.UnpackException):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: float(v) for k, v in data.items() if isinstance(k, str) and isinstance(v, (int, float))}

    def last_used(self, root: str, versions: list[ModelInfo], recorded: Mapping[str, float]) -> float:
        """The latest sign of use of ``root``, whose versions are ``versions``."""
        signs = [recorded.get(root, 0.0), self._snapshots.first_use(root) or 0.0,
                 self._snapshots.built_at(root) or 0.0, *(self._refs.stored_at(i) for i in versions)]  # fmt: skip
        return max(signs)

    def record(self, times: Mapping[str, float]) -> None:
        """Keep these times (the live roots' only): written before gc resets the lease files they came from."""
        if times:
            atomic_write(self._path, msgpack.packb(dict(times)), self._tmp)
        else:
            self._path.unlink(missing_ok=True)
