"""Repositories: the layout (``format``), the backend contract and its stores (``backend``, ``file``, ``http``),
the documents read and written over it (``repository``) and its check (``check``)."""

CONCURRENCY = 16  # requests in flight to a repository, unless a caller says otherwise
