"""docs/format.md is enough to read a repository: ``tests/spec_reader.py``, written from it alone and importing
nothing from cas, pulls and verifies models cas pushed, and refuses what the document says to refuse."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import msgpack
import pytest

from cas import Cache
from tests.support import synth

from . import spec_reader
from .conftest import tree_files


@pytest.fixture(scope="module")
def repo(tmp_path_factory, minilm) -> tuple[Path, dict[str, Path]]:
    d = tmp_path_factory.mktemp("spec")
    models = {"minilm:v1": minilm,
              "synth:f16": synth.write_model_dir(d / "f16", synth.model_tensors(91, 4 << 20, "F16")),
              "synth:f32": synth.write_model_dir(d / "f32", synth.model_tensors(92, 4 << 20, "F32"))}  # fmt: skip
    (models["synth:f32"] / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (models["synth:f32"] / "run.sh").chmod(0o755)
    cache = Cache(d / "cache")
    for tag, path in models.items():
        cache.add(path, tag)
        cache.push(tag, f"file://{d / 'repo'}")
    return d / "repo", models


def test_the_reader_imports_nothing_from_cas():
    source = Path(spec_reader.__file__).read_text()
    imported = {n.module or "" for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m == "cas" or m.startswith(("cas.", "."))}, imported


@pytest.mark.parametrize("tag", ["minilm:v1", "synth:f16", "synth:f32", "synth:latest"])
def test_a_model_cas_pushed_is_pulled_byte_for_byte_by_the_spec_reader(repo, tmp_path, tag):
    folder, models = repo
    record = spec_reader.pull(folder, tag, tmp_path / "out")
    source = models[f"{record['name']}:{record['version']}"]
    assert tree_files(tmp_path / "out") == tree_files(source)
    if record["version"] == "f32":
        assert (tmp_path / "out" / "run.sh").stat().st_mode & 0o111


def test_the_spec_reader_uses_every_codec(repo):
    folder, _ = repo
    codecs = set()
    for pack in (folder / "packs").iterdir():
        if pack.suffix == ".idx":
            _, _, records = msgpack.unpackb(pack.read_bytes(), raw=False)
            codecs |= {records[i + 48] for i in range(0, len(records), 49)}
    assert {1, 2, 3} <= codecs  # zstd, 2- and 4-byte planes: each path of the reader runs


def test_the_spec_reader_refuses_a_damaged_pack_and_a_swapped_tree(repo, tmp_path):
    folder, _ = repo
    copy = tmp_path / "repo"
    shutil.copytree(folder, copy)
    root = spec_reader.ref(copy, "synth", "f32")["root"].hex()
    pack = max((p for p in (copy / "packs").iterdir() if p.suffix != ".idx"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    other = spec_reader.ref(copy, "synth", "f16")["root"].hex()
    with pytest.raises(spec_reader.SpecError):
        for tag in ("synth:f32", "synth:f16", "minilm:v1"):
            spec_reader.pull(copy, tag, tmp_path / tag.replace(":", "-"))
    (copy / "trees" / root).write_bytes((copy / "trees" / other).read_bytes())
    with pytest.raises(spec_reader.SpecError, match="does not hash to its root"):
        spec_reader.pull(copy, "synth:f32", tmp_path / "swapped")
