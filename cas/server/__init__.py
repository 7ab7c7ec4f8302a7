"""``cas serve``: a repository folder over HTTP."""
