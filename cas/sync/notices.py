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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .pull import PullStats

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
    """The notes of one pull: its start, a progress callback, its end.  A refresh says nothing until it moves
    a byte: a host that has the newest version starts as quietly as a warm one."""

    def __init__(self, tag: str, url: str, root: str, *, refresh: bool = False):
        self.tag, self.url = tag, public_url(url)
        self._done, self._next = 0, time.monotonic() + PERIOD
        self._lock = allocate_lock()
        newer = " (newer than the one here)" if refresh else ""
        self._start = f"pulling {tag}{newer} from {self.url} into the cache at {root}"
        if not refresh:
            say(self._start)
            self._start = ""

    def progress(self, n: int) -> None:
        """Count ``n`` bytes done; say how far the pull got when a period has passed (from any thread)."""
        with self._lock:
            start, self._start = self._start, ""
            self._done += n
            now = time.monotonic()
            due = now >= self._next
            if due:
                self._next = now + PERIOD
            done = self._done
        if start:
            say(start)
        if due:
            say(f"pulling {self.tag}: {format_size(done)} done")

    def finished(self, stats: PullStats) -> None:
        """The end: nothing when the version pulled was here already (a refresh found no newer one)."""
        tag, fetched, reused = stats.info.tag, stats.bytes_fetched, stats.bytes_reused
        if stats.was_here:
            return
        if not fetched and not reused:
            say(f"stored {tag} from {self.url}: its files were all in the cache already, nothing was fetched")
            return
        here = f", {format_size(reused)} copied from files on this host" if reused else ""
        say(f"pulled {tag} from {self.url} in {stats.seconds:.1f} s ({format_size(fetched)} fetched{here})")
