"""The tree manifest: every file of a model, and the root hash that names it.

Wire form (msgpack, canonical: arrays only, files sorted by path)::

    [1, [[path, size, executable, file_id, chunks], ...]]

``chunks`` is one binary string of 36-byte records (32-byte chunk id,
big-endian uint32 raw length): compact on disk, and decoding a tree of a
million chunks creates a few thousand Python objects rather than millions.
The root hash is BLAKE3 of the encoded bytes; since the encoding is
canonical (``decode`` re-encodes each entry and compares), equal content
always has one root.  ``decode`` validates everything a hostile repository could send.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator
from itertools import starmap
from typing import NamedTuple

import msgpack

from ..errors import InvalidManifest
from .chunking import MAX_SIZE as MAX_CHUNK
from .digest import DIGEST_SIZE, chunk_id

FORMAT = 1
CHUNK_RECORD = struct.Struct(">32sI")

MAX_TREE_BYTES = 128 << 20  # ~3.5M chunks, ~280 GB of weights
MAX_FILES = 1_000_000
MAX_FILE_SIZE = 1 << 40
MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


class FileEntry(NamedTuple):
    path: str
    size: int
    executable: bool
    file_id: bytes
    chunks: bytes  # packed CHUNK_RECORDs

    def chunk_list(self) -> Iterator[tuple[bytes, int]]:
        """(chunk id, raw length) pairs in file order."""
        return CHUNK_RECORD.iter_unpack(self.chunks)

    @property
    def chunk_count(self) -> int:
        return len(self.chunks) // CHUNK_RECORD.size


def pack_chunks(chunks: list[tuple[bytes, int]]) -> bytes:
    return b"".join(CHUNK_RECORD.pack(cid, n) for cid, n in chunks)


class Tree(NamedTuple):
    files: tuple[FileEntry, ...]

    @classmethod
    def build(cls, files: list[FileEntry]) -> Tree:
        """A validated tree from entries in any order."""
        tree = cls(tuple(sorted(files, key=lambda f: f.path)))
        validate(tree)
        return tree

    def encode(self) -> bytes:
        return msgpack.packb([FORMAT, [list(f) for f in self.files]], use_bin_type=True)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def root_of(encoded: bytes) -> str:
    """The root hash of an encoded tree, in hex: how every API names a tree."""
    return chunk_id(encoded).hex()


def check_path(path: object) -> str:
    """Refuse any path that could leave the snapshot directory or is ambiguous."""
    if not isinstance(path, str):
        raise InvalidManifest(f"path {path!r} is not a string")
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidManifest(f"path {path!r} is not valid UTF-8") from None
    if not path or len(raw) > MAX_PATH_BYTES:
        raise InvalidManifest(f"path {path!r} is empty or longer than {MAX_PATH_BYTES} bytes")
    if _CONTROL.search(path):
        raise InvalidManifest(f"path {path!r} contains a NUL, control character or backslash")
    if path.startswith("/") or _DRIVE.match(path):
        raise InvalidManifest(f"path {path!r} is absolute; tree paths are relative")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InvalidManifest(f"path {path!r} has an empty, '.' or '..' component")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise InvalidManifest(f"path {path!r} has a component longer than {MAX_COMPONENT_BYTES} bytes")
    return path


def validate(tree: Tree) -> None:
    """Check a tree's invariants; raise InvalidManifest naming the first violation."""
    if not tree.files:
        raise InvalidManifest("tree lists no files")
    if len(tree.files) > MAX_FILES:
        raise InvalidManifest(f"tree lists {len(tree.files)} files, more than {MAX_FILES}")
    files: set[str] = set()
    dirs: set[str] = set()
    previous = None
    for f in tree.files:
        path = check_path(f.path)
        if previous is not None and path <= previous:
            what = "twice" if path == previous else "out of order"
            raise InvalidManifest(f"path {path!r} is listed {what}")
        previous = path
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in files:
                raise InvalidManifest(f"path {parent!r} is both a file and a directory")
            dirs.add(parent)
        if path in dirs:
            raise InvalidManifest(f"path {path!r} is both a file and a directory")
        files.add(path)
        _check_entry(f)


def _check_entry(f: FileEntry) -> None:
    if type(f.size) is not int or not 0 <= f.size <= MAX_FILE_SIZE:
        raise InvalidManifest(f"{f.path!r}: size {f.size!r} is not an integer from 0 to {MAX_FILE_SIZE}")
    if type(f.executable) is not bool:
        raise InvalidManifest(f"{f.path!r}: executable flag {f.executable!r} is not a boolean")
    if type(f.file_id) is not bytes or len(f.file_id) != DIGEST_SIZE:
        raise InvalidManifest(f"{f.path!r}: file id is not a {DIGEST_SIZE}-byte digest")
    if type(f.chunks) is not bytes or len(f.chunks) % CHUNK_RECORD.size:
        raise InvalidManifest(f"{f.path!r}: chunk list is not a sequence of {CHUNK_RECORD.size}-byte records")
    total = 0
    for _, length in f.chunk_list():
        if not 0 < length <= MAX_CHUNK:
            raise InvalidManifest(f"{f.path!r}: chunk length {length} is outside 1..{MAX_CHUNK}")
        total += length
    if total != f.size:
        raise InvalidManifest(f"{f.path!r}: chunk lengths add up to {total} bytes, the file has {f.size}")


def _header(count: int) -> bytes:
    """The canonical bytes before the first entry of a tree of ``count`` files."""
    packer = msgpack.Packer()
    return packer.pack_array_header(2) + packer.pack(FORMAT) + packer.pack_array_header(count)


def _file_count(reader: msgpack.Unpacker) -> int | None:
    """The file count of a ``[FORMAT, [files...]]`` document, or None when it is not one."""
    try:
        if reader.read_array_header() == 2 and reader.unpack() == FORMAT:
            return reader.read_array_header()
    except Exception:  # msgpack raises many types for malformed input
        pass
    return None


def _next_entry(reader: msgpack.Unpacker) -> object:
    try:
        return reader.unpack()
    except Exception as e:
        raise InvalidManifest(f"tree is not valid msgpack ({type(e).__name__}: {e})") from None


def decode(data: bytes, expected_root: str | None = None) -> Tree:
    """Decode and fully validate an encoded tree (optionally against its root).

    Entries are read one at a time and each is checked to be canonically
    encoded as it goes, so a tree of a million files costs its FileEntry
    objects and no second copy of itself (re-encoding the whole tree, or
    holding msgpack's lists beside the entries, about doubled the peak).
    """
    if len(data) > MAX_TREE_BYTES:
        raise InvalidManifest(f"tree is {len(data)} bytes, more than the {MAX_TREE_BYTES} allowed")
    if expected_root is not None and root_of(data) != expected_root:
        raise InvalidManifest(f"tree bytes do not hash to {expected_root}")
    reader = msgpack.Unpacker(
        io.BytesIO(data),
        raw=False,
        use_list=True,
        strict_map_key=True,
        max_buffer_size=MAX_TREE_BYTES,
        max_str_len=MAX_PATH_BYTES,
        max_bin_len=MAX_TREE_BYTES,
        max_array_len=MAX_FILES,
        max_map_len=0,
        max_ext_len=0,
    )
    count = _file_count(reader)
    if count is None:
        raise InvalidManifest(f"tree is not a format-{FORMAT} document [{FORMAT}, [files...]]")
    if count > MAX_FILES:
        raise InvalidManifest(f"tree lists {count} files, more than {MAX_FILES}")
    if data[: reader.tell()] != _header(count):  # also refuses a format written as true or 1.0
        raise InvalidManifest("tree is not canonically encoded")
    entries = []
    for _ in range(count):
        start = reader.tell()
        item = _next_entry(reader)
        if not (isinstance(item, list) and len(item) == 5):
            raise InvalidManifest(f"tree entry {item!r:.80} is not [path, size, executable, file_id, chunks]")
        if msgpack.packb(item, use_bin_type=True) != data[start : reader.tell()]:
            raise InvalidManifest("tree is not canonically encoded")
        entries.append(FileEntry(*item))
    if reader.tell() != len(data):
        raise InvalidManifest("tree has bytes after its last entry")
    tree = Tree(tuple(entries))
    validate(tree)
    return tree


def decode_stored(data: bytes, root: str) -> Tree:
    """A tree a cache validated (``decode`` or ``Tree.build``) before storing it: its bytes must hash to ``root``,
    which makes them the bytes validated then, so they are not validated again (10,000 files: 8 ms, not 50)."""
    if len(data) > MAX_TREE_BYTES or root_of(data) != root:
        raise InvalidManifest(f"tree bytes do not hash to {root}")
    try:
        doc = msgpack.unpackb(data, raw=False, use_list=False)
        return Tree(tuple(starmap(FileEntry, doc[1])))
    except Exception:  # not what was stored after all: the full decode words the error
        return decode(data, root)
