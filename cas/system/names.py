"""Temporary names: unique across threads, processes and hosts, each carrying its writer's owner token.

Everything is written under such a name and moved into place, so a crash
leaves at worst an orphaned temporary, never a half-written object under
its real name; gc and verify tell a dead writer's temporaries from a live
one's by the token (see ``cas.local.owners``).
"""

from __future__ import annotations

import os
from _thread import allocate_lock

# re is imported where used: a service's warm path imports this module and needs none of it.


_counter = 0


_TEMP = r"(\d+-[0-9a-f]{12})-\d+-[0-9a-f]{6}$"


_counter_lock = allocate_lock()


_token = ("", 0)  # this process's owner token and the pid it was made in (a forked child makes its own)


def process_token() -> str:
    """A name for this process that no other process, in any PID namespace or on any host, shares: its pid
    (for people reading ``tmp/``) and 48 random bits.  A writer proves it is alive with a lock named after it
    (see ``local.owners``), never by its pid, which another container's process cannot see."""
    global _token
    if _token[1] != os.getpid():
        _token = (f"{os.getpid()}-{os.urandom(6).hex()}", os.getpid())
    return _token[0]


def temp_name(prefix: str = "") -> str:
    """A name unique across threads and processes, carrying the owner token of the process that made it."""
    global _counter
    with _counter_lock:
        _counter += 1
        n = _counter
    return f"{prefix}{process_token()}-{n}-{os.urandom(3).hex()}"


def token_of_temp(name: str) -> str | None:
    """The owner token embedded in a temp_name, or None for other names."""
    import re

    m = re.search(_TEMP, name)
    return m.group(1) if m else None
