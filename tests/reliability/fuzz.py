"""Fuzzing what a repository, an export file, a server or a foreign store feeds us: trees, pack indexes,
locators, refs, chunk frames, prune marks, listings of names and versions, listing answers, export files, and
the metadata of the stores cas imports from (a Hugging Face cache's ref file, a BentoML ``model.yaml``).

    python -m tests.reliability.fuzz [--seconds 60] [--seed 0]

Mutates valid encodings (bit flips, truncations, splices, repeated runs,
random bytes) and throws each at its decoder, which must return or raise
``CasError``: any other exception is a bug, and so is a peak of memory
past ``PEAK_MB``.  The test suite runs it for a few seconds; run it longer by hand.
"""

from __future__ import annotations

import argparse
import atexit
import io
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cas import Cache
from cas.content import codec
from cas.content import ref as refs
from cas.content.chunking import chunk_bytes
from cas.content.digest import chunk_id
from cas.content.ref import ModelInfo
from cas.content.tree import FileEntry, Tree, pack_chunks
from cas.content.tree import decode as decode_tree
from cas.errors import CasError
from cas.foreign.bento import import_bento
from cas.foreign.hf import import_hf
from cas.repo import format as fmt
from cas.repo import listing, marks
from cas.repo.format import IndexEntry, Location, decode_index, decode_locator, encode_index, encode_locator
from cas.repo.http import parse_listing
from tests.support import synth
from tests.support.procs import peak_mb

SLOW = ("export file", "hf ref", "bento model.yaml")  # each case writes files: 100x slower than a decoder
PEAK_MB = 512  # numpy and the decoders take about 60 MB; one object's claim honoured would pass this


def seeds() -> dict[str, tuple[bytes, Callable[[bytes], object]]]:
    data = synth.weights(np.random.default_rng(1), (40_000,)).tobytes()
    chunks = [bytes(c) for c in chunk_bytes(data)]
    ids = [(chunk_id(c), len(c)) for c in chunks]
    config = FileEntry("config.json", 2, True, chunk_id(b"{}"), pack_chunks([(chunk_id(b"{}"), 2)]))
    tree = Tree.build([FileEntry("model/w.bin", len(data), False, chunk_id(data), pack_chunks(ids)), config])
    encoded = [codec.encode(c) for c in chunks]
    entries, offset = [], 0
    for (cid, n), e in zip(ids, encoded):
        entries.append(IndexEntry(cid, offset, len(e), n, e[0]))
        offset += len(e)
    locator = encode_locator({cid: Location("ab" * 32, e.offset, e.length) for (cid, _), e in zip(ids, entries)})
    info = ModelInfo("m", "v1", "cd" * 32, 1.0, len(data), 2, {"k": "v"}, {"n": 1})
    first, n = encoded[0], ids[0][1]
    removed = marks.Marks({fmt.tree_key("cd" * 32): 1.0}, {fmt.pack_key("ab" * 32): 2.0}, {"ef" * 32: 3.0})
    return {
        "prune marks": (marks.encode(removed), marks.decode),
        "names listing": (listing.encode_names(["a", "b-2", "m"]), listing.decode_names),
        "versions listing": (listing.encode_versions({"v1": 1.0, "v2": 2.5}), listing.decode_versions),
        "listing answer": (b"refs/m/v1\nrefs/m/v2\n", lambda b: parse_listing(b, "refs/", "http://fuzz")),
        "export file": _export_seed(data),
        "hf ref": _hf_seed(),
        "bento model.yaml": _bento_seed(),
        "tree": (tree.encode(), decode_tree),
        "pack index": (encode_index(offset, entries), decode_index),
        "locator": (locator, decode_locator),
        "ref": (info.encode(), lambda b: refs.decode(b, name="m", version="v1")),
        "chunk": (first, lambda b: codec.decode(b, n, ids[0][0])),
    }


def _export_seed(data: bytes) -> tuple[bytes, Callable[[bytes], object]]:
    """An export file of a small model, and its import into a scratch cache (removed at exit)."""
    scratch = _scratch()
    (scratch / "model").mkdir()
    (scratch / "model" / "w.bin").write_bytes(data[:50_000])
    (scratch / "model" / "config.json").write_text("{}")
    source = Cache(scratch / "source", durable=False)
    source.add(scratch / "model", "m:v1")
    out = io.BytesIO()
    source.export_model("m:v1", out)
    target = Cache(scratch / "target", durable=False)
    return out.getvalue(), lambda b: target.import_model(io.BytesIO(b))


def _scratch() -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="cas-fuzz-"))
    atexit.register(shutil.rmtree, scratch, True)
    return scratch


def _hf_seed() -> tuple[bytes, Callable[[bytes], object]]:
    """A Hugging Face cache laid out as huggingface_hub lays it out, its ``refs/main`` the input, and an import
    of ``org/m`` (at main) from it into a scratch cache."""
    import hashlib

    hub = _scratch() / "hub"
    repo, data = hub / "models--org--m", b'{"dim": 8}'
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id: a small file's name
    commit = "a" * 40
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / blob).write_bytes(data)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").symlink_to(f"../../blobs/{blob}")
    (repo / "refs").mkdir()
    target = Cache(hub.parent / "target", durable=False)

    def decode(b: bytes) -> object:
        (repo / "refs" / "main").write_bytes(b)
        return import_hf(target, "org/m", "m:v1", revision="main", hub_cache=hub)

    return commit.encode(), decode


def _bento_seed() -> tuple[bytes, Callable[[bytes], object]]:
    """A BentoML store written by BentoML, its model's ``model.yaml`` the input, and an import of the model
    into a scratch cache."""
    scratch = _scratch()
    os.environ.update(BENTOML_HOME=str(scratch / "bentoml"), BENTOML_DO_NOT_TRACK="True")  # before bentoml loads
    import bentoml

    with bentoml.models.create("fuzzed", labels={"k": "v"}, metadata={"n": 1}) as m:
        Path(m.path, "w.bin").write_bytes(b"w" * 100)
    record = Path(bentoml.models.get("fuzzed:latest").path) / "model.yaml"
    target = Cache(scratch / "target", durable=False)

    def decode(b: bytes) -> object:
        record.write_bytes(b)
        return import_bento(target, "fuzzed:latest", "m:v1")

    return record.read_bytes(), decode


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        if kind == 0 and b:  # flip bits
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and b:  # truncate
            del b[rng.randrange(len(b)) :]
        elif kind == 2:  # insert random bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif kind == 3 and len(b) > 2:  # duplicate a slice
            i = rng.randrange(len(b) - 1)
            j = rng.randrange(i + 1, len(b))
            b[j:j] = b[i:j] * rng.randint(1, 3)
        elif kind == 4 and b:  # set a byte to a msgpack marker that claims a huge length or deep nesting
            b[rng.randrange(len(b))] = rng.choice([0xDD, 0xDF, 0xC6, 0xDB, 0x91, 0xCF])
        else:  # random bytes
            b = bytearray(rng.randbytes(rng.randint(0, 64)))
    return bytes(b)


def run(seconds: float, seed: int = 0) -> int:
    """Fuzz for ``seconds``; returns the cases tried.  Raises on the first decoder that misbehaves."""
    rng = random.Random(seed)
    found = seeds()
    names, slow = sorted(set(found) - set(SLOW)), [n for n in SLOW if n in found]
    deadline = time.monotonic() + seconds
    cases = 0
    while time.monotonic() < deadline:
        name = slow[cases // 25 % len(slow)] if cases % 25 == 0 else names[cases % len(names)]
        valid, decode = found[name]
        data = mutate(rng, valid)
        try:
            decode(data)
        except CasError:
            pass
        except Exception as e:
            raise AssertionError(f"{name} decoder raised {type(e).__name__}: {e} on {data[:200]!r}") from e
        cases += 1
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.reliability.fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cases = run(args.seconds, args.seed)
    peak = peak_mb()
    print(f"{cases} cases, peak memory {peak:.0f} MB, no decoder misbehaved")
    if peak > PEAK_MB:
        print(
            f"fuzzing took the process to {peak:.0f} MB, past {PEAK_MB} MB: a decoder allocates what its input claims"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
