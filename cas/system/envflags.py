"""On/off environment variables, read the same way everywhere: ``0``, ``false``, ``no`` and ``off`` are off.

``CAS_OFFLINE=false`` must not mean offline, nor ``CAS_DURABLE=off``
durable: each flag once had its own idea of what turns it off.
"""

from __future__ import annotations

import os

OFF = ("0", "false", "no", "off")


def env_flag(name: str, default: bool) -> bool:
    """The flag ``name``: ``default`` when unset or empty, off for ``OFF`` (any case), else on."""
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in OFF
