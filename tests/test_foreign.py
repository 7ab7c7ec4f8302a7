"""Moving in from Hugging Face and BentoML: ``cas import-hf`` and ``cas import-bento`` on the real MiniLM files.

The hub cache is written here (only a download writes one), so its layout is
first checked with huggingface_hub's own scanner and offline loader; the
BentoML store is written by BentoML's own API, in a subprocess with its own
``BENTOML_HOME``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cas
import descriptor
from cas import Cache

from .conftest import REPO, cas_cli, require, tree_files

HF_REPO = "sentence-transformers/all-MiniLM-L6-v2"
MAIN = hashlib.sha1(b"main").hexdigest()
PR = hashlib.sha1(b"pr").hexdigest()
PR_README = b"# all-MiniLM-L6-v2\n\nA proposed README.\n"


def blob_name(path: str, data: bytes) -> str:
    """The blob name the Hub gives a file: sha256 for LFS files (weights), the git blob id for the rest."""
    if path.endswith(".safetensors"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_hf_repo(hub: Path, repo_id: str, snapshots: dict[str, dict[str, bytes]], refs: dict[str, str]) -> Path:
    """A repo folder as ``hf download`` leaves it: blobs, snapshots of relative symlinks, refs."""
    folder = hub / f"models--{repo_id.replace('/', '--')}"
    for commit, files in snapshots.items():
        for rel, data in files.items():
            blob = folder / "blobs" / blob_name(rel, data)
            if not blob.exists():
                blob.parent.mkdir(parents=True, exist_ok=True)
                blob.write_bytes(data)
            link = folder / "snapshots" / commit / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, link.parent), link)
    for ref, commit in refs.items():
        (folder / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, minilm: Path) -> Path:
    """A hub cache holding MiniLM at ``main`` and a pull request changing its README."""
    hub = tmp_path_factory.mktemp("hf") / "hub"
    files = tree_files(minilm)
    write_hf_repo(hub, HF_REPO, {MAIN: files, PR: {**files, "README.md": PR_README}},
                  {"main": MAIN, "refs/pr/1": PR})  # fmt: skip
    return hub


def hf_env(hub: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HOME": str(hub.parent / "hf-home"), "HF_HUB_OFFLINE": "1"}


def state_of(folder: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry under ``folder`` (symlinks not followed): inode, mtime, size, link target."""
    out = {}
    for dirpath, dirs, names in os.walk(folder):
        for n in dirs + names:
            p = Path(dirpath, n)
            st = p.lstat()
            out[str(p)] = (st.st_ino, st.st_mtime_ns, st.st_size, os.readlink(p) if p.is_symlink() else "")
    return out


def inodes(folder: Path) -> set[int]:
    return {Path(d, n).stat().st_ino for d, _, names in os.walk(folder) for n in names}


def resolved_offline(tag: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The path a service's descriptor gets for ``tag``, with no repository to pull from."""
    monkeypatch.setenv("CAS_OFFLINE", "1")
    monkeypatch.delenv("CAS_REMOTE", raising=False)

    class Service:
        model = descriptor.Model(tag, cache=Cache(home))

    return Service().model.path


# -- Hugging Face -----------------------------------------------------------------


def test_the_hub_cache_written_here_is_one_huggingface_hub_reads(hub, minilm):
    hf = require("huggingface_hub")
    scan = hf.scan_cache_dir(hub)
    assert scan.warnings == []
    (repo,) = scan.repos
    assert (repo.repo_id, repo.repo_type) == (HF_REPO, "model")
    assert {r.commit_hash: set(r.refs) for r in repo.revisions} == {MAIN: {"main"}, PR: {"refs/pr/1"}}
    main = repo.refs["main"]
    listed = {f.file_path.relative_to(main.snapshot_path).as_posix(): f.size_on_disk for f in main.files}
    assert listed == {path: len(data) for path, data in tree_files(minilm).items()}
    # what a program loading the model offline would get
    assert hf.snapshot_download(HF_REPO, cache_dir=hub, local_files_only=True) == str(main.snapshot_path)
    assert hf.try_to_load_from_cache(HF_REPO, "README.md", cache_dir=hub, revision=PR) == \
        str(repo.refs["refs/pr/1"].snapshot_path / "README.md")  # fmt: skip


def test_import_hf_by_repo_id_copies_main_with_its_labels_and_leaves_the_hub_cache_alone(
    hub, minilm, tmp_path, monkeypatch
):
    before = state_of(hub)
    home = tmp_path / "cas"
    out = cas_cli("import-hf", HF_REPO, home=home, env=hf_env(hub)).stdout
    tag = f"sentence-transformers--all-minilm-l6-v2:{MAIN[:12]}"
    assert out.startswith(f"{tag}  91.6 MB in 13 files")
    info = Cache(home).get(tag)
    assert info.labels == {"hf_repo": HF_REPO, "hf_revision": MAIN}
    path = resolved_offline(tag, home, monkeypatch)
    assert tree_files(path) == tree_files(minilm)
    assert state_of(hub) == before
    assert not inodes(home) & inodes(hub)  # copied: nothing of the cache is a hardlink of a Hub blob


def test_import_hf_by_snapshot_folder_under_a_tag_and_again_returns_the_stored_model(hub, minilm, cache):
    snapshot = hub / f"models--{HF_REPO.replace('/', '--')}" / "snapshots" / MAIN
    info = cas.import_hf(snapshot, "minilm", cache=cache)
    assert (info.tag, info.labels["hf_revision"]) == (f"minilm:{MAIN[:12]}", MAIN)
    assert tree_files(cache.materialize(info)) == tree_files(minilm)
    again = cas.import_hf(f"model/{HF_REPO}", "minilm", hub_cache=hub, cache=cache)  # the ID 'hf cache ls' prints
    assert again == info  # the same revision under the same tag: the model already stored
    with pytest.raises(cas.InvalidInput, match="snapshot folder, which names its revision"):
        cas.import_hf(snapshot, revision="main", cache=cache)


@pytest.mark.parametrize("revision", ["refs/pr/1", PR, PR[:9]])
def test_import_hf_revision_by_ref_or_commit(hub, minilm, tmp_path, revision):
    home = tmp_path / "cas"
    out = cas_cli("import-hf", HF_REPO, "minilm", "--revision", revision, "--json", home=home, env=hf_env(hub))
    stored = json.loads(out.stdout)
    assert (stored["tag"], stored["labels"]["hf_revision"]) == (f"minilm:{PR[:12]}", PR)
    files = tree_files(Cache(home).materialize(stored["tag"]))
    assert files == {**tree_files(minilm), "README.md": PR_README}


def without_huggingface_hub(*args: str, home: Path, hub: Path) -> subprocess.CompletedProcess[str]:
    """``cas`` in a process where huggingface_hub cannot be imported."""
    code = "import sys; sys.modules['huggingface_hub'] = None; from cas.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**hf_env(hub), "CAS_HOME": str(home)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO)


def test_import_hf_reads_the_layout_itself_without_huggingface_hub(hub, cache, tmp_path):
    out = without_huggingface_hub("import-hf", HF_REPO, "--revision", "refs/pr/1", "--json", home=cache.root, hub=hub)
    assert json.loads(out.stdout)["root"] == cas.import_hf(HF_REPO, revision=PR, hub_cache=hub, cache=cache).root
    folder = write_hf_repo(tmp_path / "hub", "org/tiny", {MAIN: {"w.bin": b"w"}}, {"main": MAIN})
    next((folder / "blobs").iterdir()).unlink()  # a download cut short
    out = without_huggingface_hub("import-hf", "org/tiny", home=cache.root, hub=tmp_path / "hub")
    assert out.returncode == 1
    assert out.stderr == (f"cas: error: org/tiny revision {MAIN[:12]} is incomplete in the Hugging Face cache: "
                          f"{folder}/snapshots/{MAIN}/w.bin is a dangling symlink; download it with "
                          f"'hf download org/tiny --revision {MAIN}' again\n")  # fmt: skip


def test_import_hf_errors_are_one_line_saying_what_to_do(hub, minilm, tmp_path):
    broken = tmp_path / "broken-hub"
    folder = write_hf_repo(broken, "org/tiny", {MAIN: {"config.json": b"{}", "weights.bin": b"w" * 100}},
                           {"main": MAIN})  # fmt: skip
    next((folder / "blobs").glob(blob_name("weights.bin", b"w" * 100))).unlink()  # a download cut short
    cases = [
        ((HF_REPO, "--revision", "v9"), hf_env(hub),
         f"revision 'v9' of {HF_REPO} is not in the Hugging Face cache (cached: "),
        (("org/absent",), hf_env(hub),
         f"model org/absent is not in the Hugging Face cache at {hub} (it holds {HF_REPO})"),
        (("org/tiny",), hf_env(broken), "model org/tiny in the Hugging Face cache is incomplete or damaged"),
        ((HF_REPO,), hf_env(tmp_path / "nowhere"), f"the Hugging Face cache {tmp_path / 'nowhere'} does not exist"),
        ((str(tmp_path),), hf_env(hub), "is not a snapshot folder of a Hugging Face cache"),
    ]  # fmt: skip
    for args, env, expected in cases:
        proc = cas_cli("import-hf", *args, home=tmp_path / "cas", env=env, check=False)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("cas: error: "), proc.stderr
        assert expected in proc.stderr, proc.stderr
        assert "hf download" in proc.stderr or "snapshot folder" in proc.stderr or "HF_HUB_CACHE" in proc.stderr
    listed = cas_cli("import-hf", HF_REPO, "--revision", "v9", home=tmp_path / "cas", env=hf_env(hub), check=False)
    assert f"{MAIN} (main)" in listed.stderr and f"{PR} (refs/pr/1)" in listed.stderr
    snapshot = folder / "snapshots" / MAIN
    proc = cas_cli("import-hf", str(snapshot), home=tmp_path / "cas", env=hf_env(broken), check=False)
    assert "incomplete or damaged" in proc.stderr and "hf download org/tiny" in proc.stderr
    assert not (tmp_path / "cas" / "refs").exists() or not any((tmp_path / "cas" / "refs").iterdir())


def _hostile_hub(tmp_path: Path) -> tuple[Path, Path]:
    """A hub cache of org/tiny whose main snapshot is whole, and a secret file outside it."""
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    folder = write_hf_repo(tmp_path / "hub", "org/tiny", {MAIN: {"config.json": b"{}", "w.safetensors": b"w" * 99}},
                           {"main": MAIN})  # fmt: skip
    return folder, secret


HOSTILE_ENTRIES = {
    "absolute link": lambda snap, secret: os.symlink(secret, snap / "evil.txt"),
    "relative link": lambda snap, secret: os.symlink(os.path.relpath(secret, snap), snap / "evil.txt"),
    "folder link": lambda snap, secret: os.symlink(secret.parent, snap / "extra"),
    "link to a fifo": lambda snap, secret: (os.mkfifo(secret.parent / "fifo"),
                                            os.symlink(secret.parent / "fifo", snap / "evil.txt")),
}  # fmt: skip


@pytest.mark.parametrize("entry", list(HOSTILE_ENTRIES))
def test_import_hf_reads_only_files_inside_the_store(tmp_path, entry):
    """A snapshot entry leading out of the repo's blobs (to the system's password file, a folder, a fifo that
    never ends) is refused in one line naming it, and nothing is stored or left behind."""
    folder, secret = _hostile_hub(tmp_path)
    snap = folder / "snapshots" / MAIN
    HOSTILE_ENTRIES[entry](snap, secret)
    home = tmp_path / "cas"
    proc = cas_cli("import-hf", "org/tiny", home=home, env=hf_env(tmp_path / "hub"), check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"cas: error: org/tiny revision {MAIN[:12]} in the Hugging Face cache: ")
    assert ("extra is a link to a folder" if entry == "folder link" else "evil.txt ") in proc.stderr, proc.stderr
    assert Cache(home).list() == []
    assert [p for p in (home / "tmp").rglob("*") if p.is_file()] == [] if (home / "tmp").exists() else True


@pytest.mark.parametrize("whose", ["its own", "another repo's"])
def test_a_ref_file_that_is_not_text_is_named_in_one_line(tmp_path, whose):
    """huggingface_hub's scanner reads every repo's refs as text and raised UnicodeDecodeError, a traceback,
    at the first that was not (found by the fuzzer)."""
    folder, _ = _hostile_hub(tmp_path)
    if whose == "its own":
        ref = folder / "refs" / "main"
    else:
        other = write_hf_repo(tmp_path / "hub", "org/other", {MAIN: {"config.json": b"{}"}}, {"main": MAIN})
        ref = other / "refs" / "main"
    ref.write_bytes(b"\x87\xff" + MAIN.encode())
    home = tmp_path / "cas"
    proc = cas_cli("import-hf", "org/tiny", home=home, env=hf_env(tmp_path / "hub"), check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{ref} in the Hugging Face cache is not text" in proc.stderr, proc.stderr
    assert Cache(home).list() == []


def test_import_hf_refuses_a_blob_that_is_not_what_its_name_says(tmp_path):
    """A blob's name is the sha256 of an LFS file, git's blob id of the rest: a forged or damaged one is found
    before anything is stored."""
    folder, _ = _hostile_hub(tmp_path)
    for name, forged in (("w.safetensors", b"x" * 99), ("config.json", b'{"a": 1}')):
        blob = next(p for p in (folder / "blobs").iterdir() if p.name == blob_name(name, b"w" * 99 if "w." in name
                                                                                    else b"{}"))  # fmt: skip
        kept = blob.read_bytes()
        blob.write_bytes(forged)
        proc = cas_cli("import-hf", "org/tiny", home=tmp_path / "cas", env=hf_env(tmp_path / "hub"), check=False)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"{name}: its blob {blob.name} holds other bytes" in proc.stderr, proc.stderr
        assert Cache(tmp_path / "cas").list() == []
        blob.write_bytes(kept)
    cas_cli("import-hf", "org/tiny", home=tmp_path / "cas", env=hf_env(tmp_path / "hub"))  # whole again: imported


# -- BentoML ----------------------------------------------------------------------

# Run in a child with its own BENTOML_HOME: BentoML reads it once, when first imported.
SAVE_MODELS = """
import datetime, json, shutil, sys
from pathlib import Path
import bentoml

metadata = {"dim": 384, "trained": datetime.date(2024, 1, 2), "scores": {"sts": [0.82, 0.9]}}
with bentoml.models.create("minilm", labels={"owner": "nlp", "stage": "dev"}, metadata=metadata) as m:
    shutil.copytree(sys.argv[1], m.path, dirs_exist_ok=True)
with bentoml.models.create("raw", metadata={"salt": b"\\x00\\x01"}) as raw:
    Path(raw.path, "weights.bin").write_bytes(b"w")
stored = bentoml.models.get(m.tag)
print(json.dumps({"tag": str(stored.tag), "created": stored.info.creation_time.timestamp(), "path": stored.path}))
"""


def bento_env(home: Path) -> dict[str, str]:
    return {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}


@pytest.fixture(scope="module")
def bento_store(tmp_path_factory: pytest.TempPathFactory, minilm: Path) -> tuple[Path, dict]:
    """A BentoML store written by BentoML: MiniLM with labels and metadata, and a model with bytes metadata."""
    require("bentoml")
    home = tmp_path_factory.mktemp("bentoml")
    out = subprocess.run([sys.executable, "-c", SAVE_MODELS, str(minilm)], capture_output=True, text=True,
                         env=bento_env(home), check=True, timeout=120)  # fmt: skip
    return home, json.loads(out.stdout.splitlines()[-1])


def test_import_bento_keeps_files_labels_metadata_and_creation_time(bento_store, minilm, tmp_path, monkeypatch):
    home, saved = bento_store
    before = state_of(home)
    out = cas_cli("import-bento", saved["tag"], "--json", home=tmp_path / "cas", env=bento_env(home))
    stored = json.loads(out.stdout)
    info = Cache(tmp_path / "cas").get(saved["tag"])
    assert info.tag == stored["tag"] == saved["tag"]
    assert info.labels == {"owner": "nlp", "stage": "dev", "bentoml_tag": saved["tag"]}
    assert info.metadata == {"dim": 384, "trained": "2024-01-02", "scores": {"sts": [0.82, 0.9]}}
    assert info.created == saved["created"]
    assert tree_files(resolved_offline(saved["tag"], tmp_path / "cas", monkeypatch)) == tree_files(minilm)
    assert (Path(saved["path"]) / "model.yaml").is_file()  # BentoML's record stays in BentoML's store
    assert state_of(home) == before
    assert not inodes(tmp_path / "cas") & inodes(home)

    latest = cas_cli("import-bento", "minilm:latest", "embedder", home=tmp_path / "cas", env=bento_env(home)).stdout
    version = saved["tag"].split(":")[1]
    assert latest.startswith(f"embedder:{version}  91.6 MB in 13 files")
    assert Cache(tmp_path / "cas").get(f"embedder:{version}").root == info.root


def test_import_bento_errors_are_one_line(bento_store, tmp_path):
    home, _ = bento_store
    cases = [
        (("nope:latest",), f"model nope:latest not found: no Models with name 'nope' exist in BentoML store {home}"),
        (("raw",), "metadata root.salt is a bytes"),
        (("minilm", "Bad:Name"), "invalid tag 'Bad:Name'"),
    ]  # fmt: skip
    for args, expected in cases:
        proc = cas_cli("import-bento", *args, home=tmp_path / "cas", env=bento_env(home), check=False)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("cas: error: ") and expected in proc.stderr, proc.stderr
    code = "import sys; sys.modules['bentoml'] = None; from cas.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "import-bento", "minilm"], capture_output=True, text=True,
                          env={**bento_env(home), "CAS_HOME": str(tmp_path / "cas")}, cwd=REPO)  # fmt: skip
    assert proc.stderr == "cas: error: importing from BentoML needs bentoml: pip install bentoml\n"


@pytest.mark.parametrize(
    "record",
    ["name: [unclosed\n", "!!python/object/apply:os.system ['touch {marker}']\n"],
    ids=["yaml-error", "python-tag"],
)
def test_a_damaged_or_hostile_model_yaml_is_one_line_and_never_run(bento_store, tmp_path, record):
    home, saved = bento_store
    store = tmp_path / "bentoml"
    shutil.copytree(home, store)
    marker = tmp_path / "ran"
    yaml_file = store / Path(saved["path"]).relative_to(home) / "model.yaml"
    yaml_file.write_text(record.format(marker=marker))
    proc = cas_cli("import-bento", saved["tag"], home=tmp_path / "cas", env=bento_env(store), check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"cas: error: BentoML model {saved['tag']}: its model.yaml is not valid YAML (")
    assert not marker.exists() and Cache(tmp_path / "cas").list() == []


def test_a_model_yaml_bentoml_cannot_read_as_a_record_is_one_line(bento_store, tmp_path):
    """Valid YAML that is not a model record (a field misspelt) made BentoML raise cattrs' ClassValidationError,
    printed as a traceback (found by the fuzzer)."""
    home, saved = bento_store
    store = tmp_path / "bentoml"
    shutil.copytree(home, store)
    yaml_file = store / Path(saved["path"]).relative_to(home) / "model.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("metadata:", "mgtadata:"))
    proc = cas_cli("import-bento", saved["tag"], home=tmp_path / "cas", env=bento_env(store), check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"cas: error: BentoML model {saved['tag']}: BentoML cannot read its model.yaml ("), (
        proc.stderr
    )
    assert "save the model again with BentoML" in proc.stderr and Cache(tmp_path / "cas").list() == []


def test_import_bento_reads_only_files_inside_the_model(bento_store, tmp_path):
    """A link in a BentoML model folder that leads out of it is refused in one line; nothing is stored."""
    home, saved = bento_store
    store = tmp_path / "bentoml"
    shutil.copytree(home, store, symlinks=True)
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0\n")
    model_dir = store / Path(saved["path"]).relative_to(home)
    os.symlink(secret, model_dir / "1_Pooling" / "evil.json")
    proc = cas_cli("import-bento", saved["tag"], home=tmp_path / "cas", env=bento_env(store), check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"1_Pooling/evil.json leads outside the store (to {secret}); refused" in proc.stderr, proc.stderr
    assert Cache(tmp_path / "cas").list() == []
