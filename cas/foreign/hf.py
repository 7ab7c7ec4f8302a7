"""``cas import-hf``: store a model from the local Hugging Face hub cache, with its repo id and commit as labels.

The hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``) holds one folder per repo::

    models--ORG--NAME/blobs/<sha>                        the files' bytes
    models--ORG--NAME/snapshots/<commit>/<path>          relative symlinks to those blobs
    models--ORG--NAME/refs/main                          the commit a ref (branch, tag) named when downloaded

It is read with ``huggingface_hub.scan_cache_dir`` where huggingface_hub is
installed, so what counts as a cached repo, revision or damage is its own
answer; without it, a small reader of the layout above finds the same
revisions and refs.  The snapshot's symlinks are followed only into the
repo's own ``blobs/`` (``view``), each blob's bytes must hash to its name,
and the real bytes are copied.  Nothing here touches the network: a repo or revision that is not
cached is an error saying which download command to run.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..content import tags
from ..content.ref import ModelInfo
from ..errors import InvalidInput, NotFound
from ..local.cache import LocalCache
from . import view

if TYPE_CHECKING:
    from huggingface_hub import HFCacheInfo

REPO_TYPES = ("model", "dataset", "space")
VERSION_LEN = 12  # hex digits of the commit a default version keeps, as git's short hashes
MIN_PREFIX = 7


class Revision(NamedTuple):
    """One cached commit of a repo: its snapshot folder and the refs naming it."""

    commit: str
    path: Path
    refs: frozenset[str]
    modified: float


class Repo(NamedTuple):
    """One cached repo with its revisions."""

    repo_id: str
    repo_type: str
    path: Path
    revisions: list[Revision]


def import_hf(
    cache: LocalCache,
    source: str | os.PathLike[str],
    tag: str | None = None,
    *,
    revision: str | None = None,
    repo_type: str = "model",
    hub_cache: str | os.PathLike[str] | None = None,
) -> ModelInfo:
    """Store a cached Hugging Face repo (``ORG/NAME``, or ``TYPE/ORG/NAME`` as ``hf cache ls`` prints it) or
    a snapshot folder under ``tag`` (default: a name from the repo id, the version from the commit).

    ``revision``: a commit (or a unique prefix of at least 7 digits) or a ref such as ``main``; by default
    ``main``, else the newest cached revision.  Importing the same revision under the same tag again
    returns the model already stored.
    """
    repo, rev = locate(source, revision, repo_type, hub_cache)
    check_complete(repo, rev)
    labels = {"hf_repo": repo.repo_id, "hf_revision": rev.commit}
    if repo.repo_type != "model":
        labels["hf_repo_type"] = repo.repo_type
    import tempfile  # here: every cas command loads this module, and tempfile costs them 3 ms

    what = f"{repo.repo_id} revision {rev.commit[:VERSION_LEN]} in the Hugging Face cache"
    with tempfile.TemporaryDirectory(prefix="cas-hf-") as tmp:
        files = view.build(rev.path, [repo.path / "blobs", rev.path], Path(tmp), what)
        for rel, blob in files:
            check_blob_name(blob, f"{what}: {rel}")
        return cache.add(tmp, tag_for(repo, rev, tag), labels=labels)


def check_blob_name(blob: Path, what: str) -> None:
    """A blob's name is the digest of its bytes (sha256 for LFS files, git's blob id for the rest): a blob
    that is not what its name says was damaged or forged, and is refused.  Read ahead of ``add``, which
    then finds the bytes in the page cache."""
    name = blob.name
    if blob.parent.name != "blobs" or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", name):
        return  # a file kept in the snapshot itself (no blob store) names nothing
    h = hashlib.sha256() if len(name) == 64 else hashlib.sha1(b"blob %d\0" % blob.stat().st_size)
    with open(blob, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != name:
        raise InvalidInput(f"{what}: its blob {name} holds other bytes (they hash to {h.hexdigest()}); "
                           "the cache is damaged or was tampered with: download it again")  # fmt: skip


def locate(source: str | os.PathLike[str], revision: str | None, repo_type: str,
           hub_cache: str | os.PathLike[str] | None) -> tuple[Repo, Revision]:  # fmt: skip
    """The repo and revision a repo id or a snapshot folder names."""
    text = os.fspath(source)
    if os.path.isdir(os.path.expanduser(text)) or text.startswith(("/", ".", "~")):
        if revision is not None:
            raise InvalidInput(f"{text} is a snapshot folder, which names its revision: drop --revision")
        hub, repo_id, repo_type, revision = _snapshot_parts(Path(text).expanduser())
    else:
        hub, (repo_id, repo_type) = hub_dir(hub_cache), _split_id(text, repo_type)
    repo = find_repo(hub, repo_id, repo_type)
    return repo, choose(repo, revision)


def hub_dir(given: str | os.PathLike[str] | None = None) -> Path:
    """The hub cache, found as huggingface_hub finds it, but read from the environment now (its own constants
    are fixed when it is first imported)."""
    if given is not None:
        return Path(given).expanduser()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _split_id(text: str, repo_type: str) -> tuple[str, str]:
    """``ORG/NAME`` or ``NAME`` with the given type; ``TYPE/ORG/NAME`` (``hf cache ls``'s ID) with its own."""
    parts = text.split("/")
    if len(parts) == 3 and parts[0] in REPO_TYPES:
        repo_type, parts = parts[0], parts[1:]
    if repo_type not in REPO_TYPES:
        raise InvalidInput(f"repo type {repo_type!r}: use one of {', '.join(REPO_TYPES)}")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise InvalidInput(f"{text!r} is not a Hugging Face repo id: give ORG/NAME, or a snapshot folder")
    return "/".join(parts), repo_type


def _snapshot_parts(path: Path) -> tuple[Path, str, str, str]:
    """The hub cache, repo id, repo type and commit of ``.../TYPEs--ORG--NAME/snapshots/COMMIT``."""
    path = Path(os.path.abspath(path))
    folder = path.parent.parent
    kind, sep, rest = folder.name.partition("--")
    if not path.is_dir() or path.parent.name != "snapshots" or not sep or kind.removesuffix("s") not in REPO_TYPES:
        raise InvalidInput(
            f"{path} is not a snapshot folder of a Hugging Face cache (expected "
            ".../models--ORG--NAME/snapshots/COMMIT); give that folder or a repo id"
        )
    return folder.parent, rest.replace("--", "/"), kind.removesuffix("s"), path.name


def find_repo(hub: Path, repo_id: str, repo_type: str) -> Repo:
    """The cached repo, read by huggingface_hub's scanner where it is installed, else from the layout."""
    if not hub.is_dir():
        raise NotFound(
            f"the Hugging Face cache {hub} does not exist; set HF_HUB_CACHE or HF_HOME to the cache "
            "'hf download' filled, or give a snapshot folder"
        )
    try:
        import huggingface_hub
    except ImportError:
        return _read_repo(hub, repo_id, repo_type)
    try:
        scan = huggingface_hub.scan_cache_dir(hub)
    except UnicodeDecodeError:  # the scanner reads every repo's refs as text, and stops at the first that is not
        raise _not_text(next(_undecodable_refs(hub), hub / "*" / "refs")) from None
    return _scanned_repo(scan, hub, repo_id, repo_type)


def _undecodable_refs(hub: Path) -> Iterator[Path]:
    """The ref files of the cache that are not UTF-8 text (a ref names a commit: 40 hex digits)."""
    for ref in hub.glob("*/refs/**/*"):
        if ref.is_file() and not ref.is_symlink():
            try:
                ref.read_bytes().decode()
            except UnicodeDecodeError:
                yield ref


def _not_text(ref: Path) -> InvalidInput:
    return InvalidInput(f"{ref} in the Hugging Face cache is not text (a ref names a commit): the cache is "
                        "damaged; remove that file, or download the repo again")  # fmt: skip


def _scanned_repo(scan: HFCacheInfo, hub: Path, repo_id: str, repo_type: str) -> Repo:
    """The repo as ``scan_cache_dir`` saw it; a folder it could not read is damaged, with its reason."""
    for r in scan.repos:
        if r.repo_id == repo_id and r.repo_type == repo_type:
            revisions = [Revision(v.commit_hash, v.snapshot_path, v.refs, v.last_modified) for v in r.revisions]
            return Repo(repo_id, repo_type, r.repo_path, revisions)
    folder = _folder(hub.resolve(), repo_id, repo_type)
    if folder.is_dir():
        why = [str(w) for w in scan.warnings if f"{folder}/" in str(w) or f"{folder})" in str(w)]
        raise InvalidInput(f"{repo_type} {repo_id} in the Hugging Face cache is incomplete or damaged "
                           f"({why[0] if why else 'huggingface_hub cannot read it'}); "
                           f"{_download(repo_id, repo_type)} again")  # fmt: skip
    raise _not_cached(hub, repo_id, repo_type, sorted(r.repo_id for r in scan.repos if r.repo_type == repo_type))


def _read_repo(hub: Path, repo_id: str, repo_type: str) -> Repo:
    """The fallback without huggingface_hub: the snapshot folders are the revisions, ``refs/**`` name them."""
    folder = _folder(hub, repo_id, repo_type)
    if not (folder / "snapshots").is_dir():
        cached = sorted(p.name.split("--", 1)[1].replace("--", "/") for p in hub.glob(f"{repo_type}s--*"))
        raise _not_cached(hub, repo_id, repo_type, cached)
    refs: dict[str, set[str]] = {}
    for ref in (folder / "refs").glob("**/*"):
        if ref.is_file():
            try:
                commit = ref.read_bytes().decode().strip()
            except UnicodeDecodeError:
                raise _not_text(ref) from None
            refs.setdefault(commit, set()).add(ref.relative_to(folder / "refs").as_posix())
    revisions = [Revision(p.name, p, frozenset(refs.get(p.name, ())), p.stat().st_mtime)
                 for p in (folder / "snapshots").iterdir() if p.is_dir()]  # fmt: skip
    return Repo(repo_id, repo_type, folder, revisions)


def _folder(hub: Path, repo_id: str, repo_type: str) -> Path:
    return hub / f"{repo_type}s--{repo_id.replace('/', '--')}"


def _not_cached(hub: Path, repo_id: str, repo_type: str, cached: list[str]) -> NotFound:
    held = f"it holds {', '.join(cached)}" if cached else f"it holds no {repo_type}"
    return NotFound(f"{repo_type} {repo_id} is not in the Hugging Face cache at {hub} ({held}); "
                    f"{_download(repo_id, repo_type)} first, or set HF_HUB_CACHE to the cache that has it")  # fmt: skip


def _download(repo_id: str, repo_type: str, revision: str | None = None) -> str:
    """The command that would cache what is missing (run by the user: cas never downloads from the Hub)."""
    kind = f" --repo-type {repo_type}" if repo_type != "model" else ""
    rev = f" --revision {revision}" if revision else ""
    return f"download it with 'hf download {repo_id}{kind}{rev}'"


def choose(repo: Repo, revision: str | None) -> Revision:
    """The revision a commit, a unique commit prefix or a ref names; by default ``main``, else the newest."""
    if not repo.revisions:
        raise NotFound(f"{repo.repo_type} {repo.repo_id} has no revision in the Hugging Face cache at "
                       f"{repo.path}; {_download(repo.repo_id, repo.repo_type)}")  # fmt: skip
    if revision is None:
        named = [r for r in repo.revisions if "main" in r.refs]
        return named[0] if named else max(repo.revisions, key=lambda r: (r.modified, r.commit))
    exact = [r for r in repo.revisions if revision == r.commit or revision in r.refs]
    prefixed = [r for r in repo.revisions if len(revision) >= MIN_PREFIX and r.commit.startswith(revision)]
    if exact or len(prefixed) == 1:
        return (exact or prefixed)[0]
    raise NotFound(
        f"revision {revision!r} of {repo.repo_id} is not in the Hugging Face cache (cached: {describe(repo)}); "
        f"{_download(repo.repo_id, repo.repo_type, revision)}, or pick a cached one"
    )


def describe(repo: Repo) -> str:
    """The cached revisions, newest first, as ``COMMIT (REFS)``."""
    newest = sorted(repo.revisions, key=lambda r: (r.modified, r.commit), reverse=True)
    return ", ".join(r.commit + (f" ({', '.join(sorted(r.refs))})" if r.refs else "") for r in newest)


def check_complete(repo: Repo, rev: Revision) -> None:
    """Refuse a snapshot with a dangling symlink (a blob never downloaded, or removed) before copying anything."""
    for dirpath, _, names in os.walk(rev.path):
        for n in names:
            link = os.path.join(dirpath, n)
            if not os.path.exists(link):
                raise InvalidInput(
                    f"{repo.repo_id} revision {rev.commit[:VERSION_LEN]} is incomplete in the Hugging Face cache: "
                    f"{link} is a dangling symlink; {_download(repo.repo_id, repo.repo_type, rev.commit)} again"
                )


def tag_for(repo: Repo, rev: Revision, tag: str | None) -> str:
    """``tag``, its version defaulting to the commit's first 12 digits; without one, a name from the repo id."""
    name, version = tags.split(tag) if tag is not None else (default_name(repo), None)
    return f"{name}:{version or rev.commit[:VERSION_LEN]}"


def default_name(repo: Repo) -> str:
    """A valid cas name for a repo id: ``org--name`` as the hub cache spells it, lower-cased, other characters as
    ``-``; datasets and spaces carry their type in front; only the repo's own name when that is too long."""
    prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}--"
    for text in (prefix + repo.repo_id.replace("/", "--"), prefix + repo.repo_id.rsplit("/", 1)[-1]):
        name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("._-")
        if name and len(name) <= tags.MAX_LEN:
            return name
    return re.sub(r"[^a-z0-9]+$", "", name[: tags.MAX_LEN])
