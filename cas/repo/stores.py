"""Which store a repository URL names, imported only when a repository of its kind is used."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse, urlunparse

from ..errors import RepoError
from . import CONCURRENCY
from .backend import WriteBackend


def open_backend(url: str, *, token: str | None = None, concurrency: int = CONCURRENCY,
                 creating: bool = False) -> WriteBackend:  # fmt: skip
    """The backend for ``file://PATH`` (or a plain path), ``http(s)://HOST[:PORT][/PREFIX]``,
    ``s3://BUCKET[/PREFIX]`` or ``oci://HOST[:PORT]/NAMESPACE``; ``creating``: for a writer that may start
    the repository (a folder not there yet is then empty, not a mistyped URL)."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        if "@" in parsed.netloc or parsed.query:
            raise RepoError(f"{public_url(url)}: a repository URL carries no user, password or query (they would "
                            "be printed and logged): give the server's token in CAS_TOKEN")  # fmt: skip
        from .http import HttpBackend

        return HttpBackend(url, token=token, concurrency=concurrency)
    if parsed.scheme in ("oci", "oci+http", "oci+https"):
        from .oci import OciBackend

        return OciBackend(url, concurrency=concurrency)
    if parsed.scheme == "s3":
        from .s3 import S3Backend

        return S3Backend(url, concurrency=concurrency)
    from .file import FileBackend

    if parsed.scheme == "file":
        return FileBackend(Path(_absolute_file_path(url, parsed.netloc, unquote(parsed.path))), creating=creating)
    if parsed.scheme == "" and url:
        return FileBackend(Path(url), creating=creating)
    raise RepoError(f"repository URL {url!r} is not supported; use file://PATH, http(s)://HOST[:PORT][/PREFIX] or "
                    "s3://BUCKET[/PREFIX] or oci://HOST[:PORT]/NAMESPACE")  # fmt: skip


def _absolute_file_path(url: str, host: str, path: str) -> str:
    """The folder of a ``file://`` URL, which names an absolute path (``file:///abs/path``): ``file://models/x``
    names the host "models", not a relative folder, and must not become ``/x``."""
    if host not in ("", "localhost") or not path.startswith("/"):
        raise RepoError(f"file:// URLs take an absolute path: file:///abs/path (got {url!r}); a relative folder "
                        "is given as a plain path, without file://")  # fmt: skip
    return path


def public_url(url: str) -> str:
    """``url`` without what may be secret (user, password, query), as it is recorded and printed."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if parsed.port is not None:
        host += f":{parsed.port}"
    return urlunparse((parsed.scheme, host, parsed.path, "", "", "")) if parsed.scheme else url
