"""What a pull that a service started on first access says while it runs.

A service's first access may pull gigabytes before it can answer, and a
silent pause looks like a hang.  Such a pull says when it starts, how far
it got every ``PERIOD`` seconds, and what it moved when done: as INFO
records of the ``cas`` logger, and, where the program set up no logging at
all (a plain script, a notebook, uvicorn's defaults), on stderr, as
``huggingface_hub``'s progress bars are.  ``CAS_PROGRESS=0`` keeps stderr
quiet; ``cas pull`` reports on its own.
"""

from __future__ import annotations

import logging
import sys
import time
from _thread import allocate_lock

from ..local.space import format_size
from ..repo.stores import public_url
from ..system.envflags import env_flag

log = logging.getLogger("cas")
PERIOD = 10.0  # seconds between progress notes


def say(message: str) -> None:
    """One note: to the ``cas`` logger, or to stderr when nothing is set up to show it."""
    if log.hasHandlers():
        log.info(message)
    elif env_flag("CAS_PROGRESS", True):
        text = message.encode("unicode_escape", "backslashreplace").decode("ascii")  # printed, never obeyed
        print(f"cas: {text}", file=sys.stderr, flush=True)


class PullNotes:
    """The notes of one pull: its start, a progress callback, its end."""

    def __init__(self, tag: str, url: str, root: str, *, refresh: bool = False):
        self.tag, self.url = tag, public_url(url)
        self._done, self._next = 0, time.monotonic() + PERIOD
        self._lock = allocate_lock()
        if refresh:
            say(f"asking {self.url} for the newest {tag}")
        else:
            say(f"pulling {tag} from {self.url} into the cache at {root}")

    def progress(self, n: int) -> None:
        """Count ``n`` bytes done; say how far the pull got when a period has passed (from any thread)."""
        with self._lock:
            self._done += n
            now = time.monotonic()
            if now < self._next:
                return
            self._next = now + PERIOD
            done = self._done
        say(f"pulling {self.tag}: {format_size(done)} done")

    def finished(self, tag: str, fetched: int, reused: int, seconds: float) -> None:
        if not fetched and not reused:
            say(f"{tag} is the newest in {self.url} and is here already: nothing was fetched")
            return
        here = f", {format_size(reused)} copied from files on this host" if reused else ""
        say(f"pulled {tag} from {self.url} in {seconds:.1f} s ({format_size(fetched)} fetched{here})")
