"""On/off and duration environment variables, read the same way everywhere: ``0``, ``false``, ``no`` and ``off``
are off, and a duration that is not a number in its range is one line naming the variable.

``CAS_OFFLINE=false`` must not mean offline, nor ``CAS_DURABLE=off``
durable: each flag once had its own idea of what turns it off.
"""

from __future__ import annotations

import math
import os

from ..errors import InvalidInput

OFF = ("0", "false", "no", "off")


def env_flag(name: str, default: bool) -> bool:
    """The flag ``name``: ``default`` when unset or empty, off for ``OFF`` (any case), else on."""
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in OFF


def env_seconds(name: str, default: float, *, low: float, high: float) -> float:
    """The duration ``name`` sets, in seconds: ``default`` when unset or empty; a value that is not a number from
    ``low`` to ``high`` is an InvalidInput (``CAS_STALL_TIMEOUT=abc`` was a traceback)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not low <= value <= high:  # NaN fails too
        raise InvalidInput(f"{name}={raw!r} is not a number of seconds from {low:g} to {high:g}; unset it or give one")
    return value
