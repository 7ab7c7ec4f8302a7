"""Repositories: the layout (``format``), the backend contract and its stores (``backend``, ``file``, ``http``),
the documents read and written over it (``repository``) and its check (``check``)."""

from ..system.envflags import env_seconds

CONCURRENCY = 16  # requests in flight to a repository, unless a caller says otherwise
STALL = 30.0  # seconds without a byte before a read counts as stalled and is retried (CAS_STALL_TIMEOUT)


def stall_timeout() -> float:
    """``CAS_STALL_TIMEOUT``, else ``STALL``: how long a store's read may go without a byte."""
    return env_seconds("CAS_STALL_TIMEOUT", STALL, low=0.1, high=3600)
