"""Mutation job: realistic slips in the modules that guard data, each run against the tests that should catch it.

    python -m benchmarks --only mutation

Each mutant is one edit of one line or statement (a check dropped, an order swapped, a condition
weakened) in a copy of the repository, never in the working tree; the tests named with it run there
(``pytest -x``) and the mutant is *killed* when they fail.  The report lists the survivors with why each
changes no behaviour, if it does not: a survivor that is not explained is a missing test.  A hand-made
list, not a tool's: mutmut and cosmic-ray mutate every operator of every line, thousands of mutants that
take hours on 2 cores, most of them in logging and messages; these are the slips a reviewer would fear.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from tests.support.procs import REPO


class Mutant(NamedTuple):
    name: str
    path: str  # relative to the repository
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest node ids or -k expressions after "::"
    equivalent: str = ""  # why it changes no behaviour, when it does not


T_SYNC, T_CACHE, T_PRUNE = "tests/test_sync.py", "tests/test_cache.py", "tests/test_prune.py"

MUTANTS = [
    Mutant("server: ?list= accepts '..'", "cas/server/app.py", ' or ".." in prefix.split("/")', "",
           ("tests/reliability/test_server_abuse.py::test_a_listing_prefix_that_climbs_out_of_the_layout_is_refused",)),
    Mutant("server: a ref without its locator", "cas/server/app.py",
           "for needed in (tree_key(info.root), locator_key(info.root)):", "for needed in (tree_key(info.root),):",
           (f"{T_SYNC}::test_server_refuses_a_ref_whose_tree_or_locator_is_not_there",)),
    Mutant("server: an upload not hashing to its name", "cas/server/app.py", "if digest.hex() != parts[0]:",
           "if False:", (f"{T_SYNC}::test_server_checks_uploads_against_their_names",)),
    Mutant("push: chunks read from blobs not re-hashed", "cas/sync/packing.py",
           "        if chunk_id(data) != chunk.chunk_id:\n            raise CorruptObject(f\"blob",
           "        if False:\n            raise CorruptObject(f\"blob",
           ("tests/test_push.py::test_a_blob_changed_after_add_is_never_pushed_under_its_old_id",)),
    Mutant("push: reuses packs a prune is deleting", "cas/sync/push.py",
           "    if unsafe:  # a prune is deleting packs we meant to reuse", "    if False:  # a prune is deleting",
           (f"{T_PRUNE}::test_a_new_version_never_reuses_a_pack_a_prune_is_deleting",)),
    Mutant("tree: a stored tree not checked against its root", "cas/content/tree.py",
           "if len(data) > MAX_TREE_BYTES or root_of(data) != root:", "if len(data) > MAX_TREE_BYTES:",
           (f"{T_CACHE}::test_a_tree_file_swapped_for_another_valid_tree_is_caught",)),
    Mutant("tree: '..' in a path", "cas/content/tree.py", 'if part in ("", ".", ".."):', 'if part in ("", "."):',
           ("tests/test_tree.py", "tests/reliability/test_hostile.py")),
    Mutant("tree: absolute paths", "cas/content/tree.py", 'if path.startswith("/") or _DRIVE.match(path):',
           "if _DRIVE.match(path):", ("tests/test_tree.py",)),
    Mutant("tree: non-canonical entries", "cas/content/tree.py",
           "if msgpack.packb(item, use_bin_type=True) != data[start : reader.tell()]:", "if False:",
           ("tests/test_tree.py",)),
    Mutant("codec: decoded chunk not checked against its id", "cas/content/codec.py",
           "    if chunk_id(out) != expected_id:", "    if False:", ("tests/test_codec.py",)),
    Mutant("codec: a frame declaring another size", "cas/content/codec.py", "    if declared != expected:",
           "    if False:", ("tests/test_codec.py",)),
    Mutant("codec: byte planes of the wrong length", "cas/content/codec.py", "            if stored != plane:",
           "            if False:", ("tests/test_codec.py",)),
    Mutant("ref: a root that is not a digest", "cas/content/ref.py",
           'isinstance(doc["root"], bytes) and len(doc["root"]) == DIGEST_SIZE', 'isinstance(doc["root"], bytes)',
           ("tests/test_ref.py",)),
    Mutant("ref: remotes that are not strings", "cas/content/ref.py",
           "if not isinstance(remotes, list) or not all(isinstance(r, str) for r in remotes):",
           "if not isinstance(remotes, (list, str, dict)):", ("tests/test_ref.py",)),
    Mutant("refs: an existing version rewritten with other content", "cas/local/refs.py",
           "                if existing.root != info.root:", "                if False:",
           (f"{T_CACHE}",)),
    Mutant("objects: blobs named before their bytes are flushed", "cas/local/objects.py",
           "        if durable:\n            fsync_all([t[0] for t in todo], [])\n", "",
           (f"{T_CACHE}::test_a_durable_add_flushes_each_blob_s_bytes_before_naming_it",)),
    Mutant("snapshots: folders left writable", "cas/local/snapshots.py", "            os.chmod(d, 0o555)",
           "            pass", ("tests/test_snapshots.py", f"{T_CACHE}")),
    Mutant("verify: blobs not re-hashed", "cas/local/verify.py",
           "self.blob_ok[path] = hash_file(str(path)) == file_id", "self.blob_ok[path] = True",
           ("tests/test_snapshots.py", f"{T_CACHE}")),
    Mutant("gc: evicts a version stored here only", "cas/local/gc.py",
           "here_only = [info.tag for info, remotes in versions if not remotes]", "here_only = []",
           ("tests/test_gc.py",)),
    Mutant("pull: part files published without their whole-file hash", "cas/sync/assembly.py",
           "if digests[part] != f.file_id]", "if False]", (T_SYNC,)),
    Mutant("pull: a one-chunk file copied from a local blob trusted", "cas/sync/assembly.py",
           "                self.single.pop(run.part, None)", "                pass",
           (f"{T_SYNC}::test_a_one_chunk_file_copied_from_a_changed_local_blob_is_fetched_again",)),
    Mutant("pull: a part file of the wrong size resumed", "cas/sync/assembly.py",
           "if stat.S_ISREG(st.st_mode) and st.st_size == size else None", "if stat.S_ISREG(st.st_mode) else None",
           (f"{T_SYNC}::test_a_part_file_of_the_wrong_size_is_assembled_anew_whatever_its_log_says",)),
    Mutant("prune: recent removals ignored", "cas/sync/prune.py",
           "        removed = {r for r, t in (await self.repo.marks()).removed.items() if t > start - self.grace}",
           "        removed: set[str] = set()",
           (f"{T_PRUNE}::test_what_a_recently_removed_ref_reaches_is_marked_but_never_deleted_within_the_grace",)),
    Mutant("prune: the commit does not protect what removed refs reach", "cas/sync/prune.py",
           "marks = await self._commit(survey, unreachable, _reached(survey.removed), start)",
           "marks = await self._commit(survey, unreachable, set(), start)",
           (f"{T_PRUNE}::test_what_a_recently_removed_ref_reaches_is_marked_but_never_deleted_within_the_grace",),
           equivalent="the deletion step protects the same keys again (live = reached by refs | by recent removals): "
                      "a key moved to deleting is dropped from the marks, not deleted, and marked afresh next run"),
    Mutant("descriptor: leases after materializing", "descriptor/__init__.py",
           "        cache.lease(info)  # before the snapshot: a removal that finished first is reported, not rebuilt\n"
           "        try:\n            return cache.materialize(info, include=self._include, exclude=self._exclude)",
           "        try:\n            path = cache.materialize(info, include=self._include, exclude=self._exclude)\n"
           "            cache.lease(info)\n            return path",
           ("tests/test_descriptor.py::test_a_removal_right_after_the_snapshot_is_built_leaves_the_service_its_files",)),
    Mutant("export: chunks read from blobs not re-hashed", "cas/sync/archive.py",
           "if len(data) != c.length or chunk_id(data) != c.chunk_id:", "if len(data) != c.length:",
           ("tests/test_archive.py::test_a_blob_changed_after_add_is_never_exported",)),
    Mutant("selection: an include matching nothing accepted", "cas/content/selection.py",
           "if not line.negated and not line.hit and not any(", "if False and not any(",
           ("tests/test_selections.py",)),
    Mutant("checkout: a user's edit overwritten without --force", "cas/local/checkout.py",
           "if plan.conflicts and not force:", "if False:", ("tests/test_checkout.py",)),
    Mutant("seeds: a chunk from a seed file not verified", "cas/sync/seeds.py",
           "if len(data) == length and chunk_id(data) == cid:", "if len(data) == length:",
           ("tests/test_seeds.py::test_a_seed_changing_while_it_is_read_is_fetched_instead",)),
]  # fmt: skip


def run(work: Path, quick: bool) -> dict:
    """Every mutant (the first five in quick mode) in a copy of the repository; what each test run said."""
    copy = Path(tempfile.mkdtemp(prefix="cas-mutants-", dir=work))
    shutil.copytree(REPO, copy, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "results", "*.egg-info"))  # fmt: skip
    outcomes = []
    try:
        for m in MUTANTS[:5] if quick else MUTANTS:
            outcomes.append(_try(copy, m))
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    killed = sum(o["killed"] for o in outcomes)
    return {"mutants": outcomes, "killed": killed, "total": len(outcomes)}


def _try(copy: Path, m: Mutant) -> dict:
    target = copy / m.path
    original = target.read_text()
    if original.count(m.old) != 1:
        return {"name": m.name, "killed": False, "seconds": 0.0, "error": f"{m.path}: the line to mutate moved"}
    target.write_text(original.replace(m.old, m.new))
    start = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                             cwd=copy, capture_output=True, text=True, timeout=900)  # fmt: skip
        killed = out.returncode not in (0, 5)  # 5: no test ran, which kills nothing
    finally:
        target.write_text(original)
    return {"name": m.name, "killed": killed, "seconds": time.perf_counter() - start, "equivalent": m.equivalent}


def headline_rows(f: dict) -> list[tuple[str, str, str, str, str]]:
    rate = f["killed"] / f["total"]
    explained = f["killed"] + sum(1 for o in f["mutants"] if not o["killed"] and o.get("equivalent"))
    return [("mutants killed by the suite (hand-made slips in data-guarding code)", f"{f['killed']} of {f['total']}",
             f"{explained} of {f['total']} killed or explained equivalent", f"{rate:.0%}",
             f"≥ 90%: {'met' if rate >= 0.9 else 'not met'}")]  # fmt: skip


def section(f: dict) -> str:
    lines = ["| mutant | outcome | seconds |", "|---|---|---|"]
    for o in f["mutants"]:
        state = "killed" if o["killed"] else ("survived: " + (o.get("equivalent") or o.get("error") or "NOT EXPLAINED"))
        lines.append(f"| {o['name']} | {state} | {o['seconds']:.1f} |")
    return ("## 16. Mutation\n\nEach mutant is one realistic slip in a module that guards data, made in a copy of the "
            "repository and run against the tests named with it (`benchmarks/mutation.py`): "
            f"{f['killed']} of {f['total']} killed.\n\n" + "\n".join(lines))  # fmt: skip
