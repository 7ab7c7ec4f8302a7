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

import ast
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


T_SYNC, T_CACHE, T_PRUNE, T_TRUST = (f"tests/test_{m}.py" for m in ("sync", "cache", "prune", "trust"))
T_TREE, T_CODEC, T_REF, T_ARCHIVE = (f"tests/test_{m}.py" for m in ("tree", "codec", "ref", "archive"))
ABUSE = "tests/reliability/test_server_abuse.py"
SERVER, TREE, CODEC, REF = "cas/server/app.py", "cas/content/tree.py", "cas/content/codec.py", "cas/content/ref.py"
PRUNE, TRUST_DOCS, TRUST_CLIENT = "cas/sync/prune.py", "cas/trust/documents.py", "cas/trust/client.py"

MUTANTS = [
    # the server: what a writer with the token may store
    Mutant("server: ?list= accepts '..'", SERVER, ' or ".." in prefix.split("/")', "",
           (f"{ABUSE}::test_a_listing_prefix_that_climbs_out_of_the_layout_is_refused",)),
    Mutant("server: ?list= takes any prefix", SERVER, 'if not prefix.startswith(LIST_PREFIXES) or ".." in',
           'if ".." in', (f"{ABUSE}::test_a_listing_prefix_that_climbs_out_of_the_layout_is_refused",)),
    Mutant("server: any bearer token", SERVER,
           'if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):',
           'if not given.startswith("Bearer "):', (ABUSE,)),
    Mutant("server: a ref without its locator", SERVER,
           "for needed in (tree_key(info.root), locator_key(info.root)):", "for needed in (tree_key(info.root),):",
           (f"{T_SYNC}::test_server_refuses_a_ref_whose_tree_or_locator_is_not_there",)),
    Mutant("server: an upload not hashing to its name", SERVER, "if digest.hex() != parts[0]:",
           "if False:", (f"{T_SYNC}::test_server_checks_uploads_against_their_names",)),
    Mutant("server: listings deleted", SERVER, 'if check_key(key)[0] in ("names", "versions"):', "if False:",
           (f"{ABUSE}::test_a_listing_is_never_deleted_and_a_version_never_replaced_by_other_content",)),
    Mutant("server: a version replaced by other content", SERVER, "        if old.root != new.root:",
           "        if False:",
           (f"{ABUSE}::test_a_listing_is_never_deleted_and_a_version_never_replaced_by_other_content",)),
    Mutant("server: a listing written over a changed one", SERVER,
           "if if_match is not None and (current is None or _etag(current) != if_match):", "if False:",
           (f"{ABUSE}::test_uploads_that_would_leave_the_repository_inconsistent_are_refused",)),
    Mutant("server: a locator into a pack without index", SERVER,
           "        if not (root / index_key(pack_id)).is_file():", "        if False:",
           (f"{ABUSE}::test_uploads_that_would_leave_the_repository_inconsistent_are_refused",)),
    Mutant("server: an index not matching its pack's size", SERVER, "    if size != pack.stat().st_size:",
           "    if False:", (f"{ABUSE}::test_uploads_that_would_leave_the_repository_inconsistent_are_refused",)),
    # push
    Mutant("push: chunks read from blobs not re-hashed", "cas/sync/packing.py",
           "        if chunk_id(data) != chunk.chunk_id:\n            raise CorruptObject(f\"blob",
           "        if False:\n            raise CorruptObject(f\"blob",
           ("tests/test_push.py::test_a_blob_changed_after_add_is_never_pushed_under_its_old_id",)),
    Mutant("push: reuses packs a prune is deleting", "cas/sync/push.py",
           "    if unsafe:  # a prune is deleting packs we meant to reuse", "    if False:  # a prune is deleting",
           (f"{T_PRUNE}::test_a_new_version_never_reuses_a_pack_a_prune_is_deleting",)),
    Mutant("push: the ref before its tree", "cas/sync/push.py",
           "    await repo.put_tree(info.root, tree.encode(), locations)\n    new = await repo.put_ref(info)",
           "    new = await repo.put_ref(info)\n    await repo.put_tree(info.root, tree.encode(), locations)",
           ("tests/test_push.py",)),
    Mutant("push: a version rewritten with other content", "cas/repo/repository.py",
           "        if existing is not None and existing.root != info.root:", "        if False:",
           (f"{T_SYNC}::test_pushing_other_content_under_an_existing_version_is_refused",)),
    # trees
    Mutant("tree: a stored tree not checked against its root", TREE,
           "if len(data) > MAX_TREE_BYTES or root_of(data) != root:", "if len(data) > MAX_TREE_BYTES:",
           (f"{T_CACHE}::test_a_tree_file_swapped_for_another_valid_tree_is_caught",)),
    Mutant("tree: '..' in a path", TREE, 'if part in ("", ".", ".."):', 'if part in ("", "."):',
           (T_TREE, "tests/reliability/test_hostile.py")),
    Mutant("tree: absolute paths", TREE, 'if path.startswith("/") or _DRIVE.match(path):', "if _DRIVE.match(path):",
           (T_TREE,)),
    Mutant("tree: control characters in a path", TREE, "    if _CONTROL.search(path):", "    if False:", (T_TREE,)),
    Mutant("tree: a path listed twice", TREE, "if previous is not None and path <= previous:",
           "if previous is not None and path < previous:", (T_TREE,)),
    Mutant("tree: a file that is also a folder", TREE, "            if parent in files:", "            if False:",
           (T_TREE,)),
    Mutant("tree: non-canonical entries", TREE,
           "if msgpack.packb(item, use_bin_type=True) != data[start : reader.tell()]:", "if False:", (T_TREE,)),
    Mutant("tree: a file id of the wrong length", TREE,
           "if type(f.file_id) is not bytes or len(f.file_id) != DIGEST_SIZE:", "if type(f.file_id) is not bytes:",
           (T_TREE,)),
    Mutant("tree: empty chunks", TREE, "if not 0 < length <= MAX_CHUNK:", "if not length <= MAX_CHUNK:", (T_TREE,)),
    Mutant("tree: chunk lengths not adding up to the size", TREE, "    if total != f.size:", "    if False:",
           (T_TREE,)),
    # the codec
    Mutant("codec: decoded chunk not checked against its id", CODEC, "    if chunk_id(out) != expected_id:",
           "    if False:", (T_CODEC,)),
    Mutant("codec: decoded length not checked", CODEC, "    if len(out) != raw_length:", "    if False:", (T_CODEC,)),
    Mutant("codec: a frame declaring another size", CODEC, "    if declared != expected:", "    if False:",
           (T_CODEC,)),
    Mutant("codec: byte planes of the wrong length", CODEC, "            if stored != plane:", "            if False:",
           (T_CODEC,)),
    Mutant("codec: a plane cut short", CODEC, "        if len(body) != stored:", "        if False:", (T_CODEC,)),
    Mutant("codec: bytes after the last plane", CODEC, "    if len(tail) != raw_length % word:", "    if False:",
           (T_CODEC,)),
    # refs
    Mutant("ref: a root that is not a digest", REF,
           'isinstance(doc["root"], bytes) and len(doc["root"]) == DIGEST_SIZE', 'isinstance(doc["root"], bytes)',
           (T_REF,)),
    Mutant("ref: remotes that are not strings", REF,
           "if not isinstance(remotes, list) or not all(isinstance(r, str) for r in remotes):",
           "if not isinstance(remotes, (list, str, dict)):", (T_REF,)),
    Mutant("ref: a record stored under another tag", REF,
           "if (name is not None and info.name != name) or (version is not None and info.version != version):",
           "if False:", (T_REF,)),
    Mutant("ref: an unknown format", REF, 'if doc["format"] != FORMAT:', "if False:", (T_REF,)),
    Mutant("ref: an oversized record", REF, "    if len(data) > MAX_REF_BYTES:", "    if False:", (T_REF,)),
    Mutant("tags: overlong names", "cas/content/tags.py", "    if len(value) > MAX_LEN:", "    if False:",
           ("tests/test_tags.py",)),
    Mutant("selection: an include matching nothing accepted", "cas/content/selection.py",
           "if not line.negated and not line.hit and not any(", "if False and not any(",
           ("tests/test_selections.py",)),
    Mutant("selection: a record not in canonical form", "cas/content/selection.py",
           "if sel is None or sel.encode() != data:", "if sel is None:", ("tests/test_selections.py",),
           equivalent="a snapshot's record is taken only if its selection's key, the hash of the canonical form, is "
                      "the snapshot's name: another form of it means the same selection"),
    # the local cache
    Mutant("refs: an existing version rewritten with other content", "cas/local/refs.py",
           "                if existing.root != info.root:", "                if False:", (T_CACHE,)),
    Mutant("objects: blobs named before their bytes are flushed", "cas/local/objects.py",
           "        if durable:\n            fsync_all([t[0] for t in todo], [])\n", "",
           (f"{T_CACHE}::test_a_durable_add_flushes_each_blob_s_bytes_before_naming_it",)),
    Mutant("objects: blobs left writable", "cas/local/objects.py",
           "            os.chmod(src, 0o555 if executable else 0o444)\n", "", (T_CACHE,)),
    Mutant("snapshots: folders left writable", "cas/local/snapshots.py", "            os.chmod(d, 0o555)",
           "            pass", ("tests/test_snapshots.py", T_CACHE)),
    Mutant("verify: blobs not re-hashed", "cas/local/verify.py",
           "self.blob_ok[path] = hash_file(str(path)) == file_id", "self.blob_ok[path] = True",
           ("tests/test_snapshots.py", T_CACHE)),
    Mutant("verify: a snapshot file replaced", "cas/local/verify.py",
           "if blob in bad_blobs or hash_file(str(p)) != f.file_id:", "if blob in bad_blobs:",
           ("tests/test_snapshots.py", T_CACHE)),
    Mutant("verify: a stray file in a snapshot", "cas/local/verify.py", "                if rel not in expected:",
           "                if False:", ("tests/test_snapshots.py", T_CACHE)),
    Mutant("gc: evicts a version stored here only", "cas/local/gc.py",
           "here_only = [info.tag for info, remotes in versions if not remotes]", "here_only = []",
           ("tests/test_gc.py",)),
    Mutant("gc: a blob another version shares removed", "cas/local/gc.py", "            if inv.users[blob] <= 0:",
           "            if inv.users[blob] <= 1:", ("tests/test_gc.py",)),
    Mutant("checkout: a user's edit overwritten without --force", "cas/local/checkout.py",
           "if plan.conflicts and not force:", "if False:", ("tests/test_checkout.py",)),
    # pull
    Mutant("pull: part files published without their whole-file hash", "cas/sync/assembly.py",
           "if digests[part] != f.file_id]", "if False]", (T_SYNC,)),
    Mutant("pull: a one-chunk file copied from a local blob trusted", "cas/sync/assembly.py",
           "                self.single.pop(run.part, None)", "                pass",
           (f"{T_SYNC}::test_a_one_chunk_file_copied_from_a_changed_local_blob_is_fetched_again",)),
    Mutant("pull: a part file of the wrong size resumed", "cas/sync/assembly.py",
           "if stat.S_ISREG(st.st_mode) and st.st_size == size else None", "if stat.S_ISREG(st.st_mode) else None",
           (f"{T_SYNC}::test_a_part_file_of_the_wrong_size_is_assembled_anew_whatever_its_log_says",)),
    Mutant("pull: a damaged chunk not read again", "cas/sync/rangefetch.py", "            for _ in range(REREADS):",
           "            for _ in range(0):",
           ("tests/reliability/test_network.py::test_transient_faults_are_survived",)),
    Mutant("pull: a ref naming another root than its signature", "cas/sync/pull.py",
           "        if info.root != verdict.verified.root:", "        if False:", (T_TRUST,)),
    Mutant("seeds: a chunk from a seed file not verified", "cas/sync/seeds.py",
           "if len(data) == length and chunk_id(data) == cid:", "if len(data) == length:",
           ("tests/test_seeds.py::test_a_seed_changing_while_it_is_read_is_fetched_instead",)),
    Mutant("file repository: a short range read", "cas/repo/file.py",
           "        if end is not None and len(data) != end - start:", "        if False:",
           ("tests/test_backends.py",)),
    Mutant("file repository: a pipe or device read", "cas/repo/file.py",
           "            if not stat.S_ISREG(st.st_mode):", "            if False:",
           ("tests/reliability/test_hostile.py::test_repository_files_that_are_devices_or_pipes_are_refused",)),
    # prune
    Mutant("prune: recent removals ignored", PRUNE,
           "        removed = {r for r, t in (await self.repo.marks()).removed.items() if t > start - self.grace}",
           "        removed: set[str] = set()",
           (f"{T_PRUNE}::test_what_a_recently_removed_ref_reaches_is_marked_but_never_deleted_within_the_grace",)),
    Mutant("prune: the commit does not protect what removed refs reach", PRUNE,
           "marks = await self._commit(survey, unreachable, _reached(survey.removed), start)",
           "marks = await self._commit(survey, unreachable, set(), start)",
           (f"{T_PRUNE}::test_what_a_recently_removed_ref_reaches_is_marked_but_never_deleted_within_the_grace",),
           equivalent="the deletion step protects the same keys again (live = reached by refs | by recent removals): "
                      "a key moved to deleting is dropped from the marks, not deleted, and marked afresh next run"),
    Mutant("prune: the grace period ignored", PRUNE, "t <= start - grace and t < start}", "t < start}", (T_PRUNE,)),
    Mutant("prune: deletes what the marks say, live or not", PRUNE,
           "doomed = {k: t for k, t in marks.deleting.items() if k not in live}", "doomed = dict(marks.deleting)",
           (f"{T_PRUNE}::test_forged_marks_never_delete_what_a_ref_reaches",)),
    Mutant("prune: refs landing during the run not read again", PRUNE,
           "            live |= await self._reached_now()\n", "            pass\n",
           (f"{T_PRUNE}::test_a_ref_landing_while_forged_marks_are_being_deleted_keeps_what_it_reaches",)),
    # export files
    Mutant("export: chunks read from blobs not re-hashed", "cas/sync/archive.py",
           "if len(data) != c.length or chunk_id(data) != c.chunk_id:", "if len(data) != c.length:",
           (f"{T_ARCHIVE}::test_a_blob_changed_after_add_is_never_exported",)),
    Mutant("export: the end check ignored", "cas/sync/exportfile.py", "        if marker[len(END) :] != expected:",
           "        if False:", (T_ARCHIVE,)),
    Mutant("export: a length claim unbounded", "cas/sync/exportfile.py", "        if n > limit:", "        if False:",
           (T_ARCHIVE,)),
    Mutant("export: bytes after the end marker", "cas/sync/exportfile.py", "        if self.f.read(1):",
           "        if False:", (T_ARCHIVE,)),
    # trust
    Mutant("trust: a threshold of keys counted as one", TRUST_DOCS, "    if len(good) < grant.threshold:",
           "    if len(good) < 1:",
           (f"{T_TRUST}::test_a_role_needing_two_keys_refuses_a_document_only_one_of_them_signed",)),
    Mutant("trust: a key outside the grant counted", TRUST_DOCS,
           "if kid in grant.keys and kid in keys and kid not in good:", "if kid in keys and kid not in good:",
           (f"{T_TRUST}::test_a_role_cannot_sign_names_it_was_not_given_nor_another_role",)),
    Mutant("trust: an expired state accepted", TRUST_DOCS, "    if expires <= now:", "    if False:",
           (f"{T_TRUST}::test_a_state_past_its_expiry_is_refused_until_the_publisher_refreshes_it",)),
    Mutant("trust: the state rolled back", TRUST_CLIENT, "            if state.version < old.version:",
           "            if False:", (f"{T_TRUST}::test_an_older_signed_state_is_refused_once_a_newer_one_was_seen",)),
    Mutant("trust: the root rolled back", TRUST_CLIENT, "        elif claimed.root_version < root.version:",
           "        elif False:",
           (f"{T_TRUST}::test_a_host_anchored_at_a_newer_root_refuses_a_state_of_an_older_one",)),
    Mutant("trust: a role not the one the state names", TRUST_CLIENT,
           "            if blake3.blake3(data).hexdigest() != digest:", "            if False:", (T_TRUST,)),
    Mutant("trust: latest signed with another root than its version", TRUST_CLIENT,
           "if signed is None or signed.root != found.root or not grant.covers(concrete):", "if signed is None:",
           (f"{T_TRUST}::test_a_role_document_whose_latest_disagrees_with_the_version_it_names_is_refused",)),
    # the descriptor
    Mutant("descriptor: leases after materializing", "descriptor/__init__.py",
           "        cache.lease(info)  # before the snapshot: a removal that finished first is reported, not rebuilt\n"
           "        try:\n            return cache.materialize(info, include=self._include, exclude=self._exclude)",
           "        try:\n            path = cache.materialize(info, include=self._include, exclude=self._exclude)\n"
           "            cache.lease(info)\n            return path",
           ("tests/test_descriptor.py::test_a_removal_right_after_the_snapshot_is_built_leaves_the_service_its_files",)),
    Mutant("descriptor: a travelled version with other content here", "descriptor/__init__.py",
           "        if here.root != self.root:", "        if False:",
           ("tests/test_travel.py::test_an_instance_whose_version_differs_where_it_lands_is_refused",)),
    Mutant("descriptor: a forked child inherits a resolution in progress", "descriptor/__init__.py",
           'if hasattr(os, "register_at_fork"):', "if False:",
           ("tests/test_fork.py::test_a_child_forked_while_its_parent_pulls_resolves_on_its_own",)),
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
    mutated = original.replace(m.old, m.new)
    try:
        ast.parse(mutated)
    except SyntaxError:  # it would fail every test: killed by the compiler, not by a test
        return {"name": m.name, "killed": False, "seconds": 0.0, "error": f"{m.path}: the mutant does not parse"}
    target.write_text(mutated)
    start = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                             cwd=copy, capture_output=True, text=True, timeout=900)  # fmt: skip
        error = _ERRORS.get(out.returncode, f"pytest exited {out.returncode}") if out.returncode > 1 else ""
    except subprocess.TimeoutExpired:
        out, error = None, "its tests ran past 900 s"
    finally:
        target.write_text(original)
    killed = out is not None and out.returncode == 1  # a test failed: nothing else counts as a kill
    return {"name": m.name, "killed": killed, "seconds": time.perf_counter() - start, "equivalent": m.equivalent,
            **({"error": error} if error else {})}  # fmt: skip


# pytest's exit codes other than 0 (passed) and 1 (a test failed): none of them is a test catching the mutant
_ERRORS = {2: "the run was interrupted", 3: "pytest failed internally", 4: "pytest could not collect or was misused",
           5: "no test ran"}  # fmt: skip


def headline_rows(f: dict) -> list[tuple[str, str, str, str, str]]:
    rate = f["killed"] / f["total"]
    explained = f["killed"] + sum(1 for o in f["mutants"] if not o["killed"] and o.get("equivalent"))
    return [("mutants killed by the suite (hand-made slips in data-guarding code)", f"{f['killed']} of {f['total']}",
             f"{explained} of {f['total']} killed or explained equivalent", f"{rate:.0%}",
             f"≥ 90%: {'met' if rate >= 0.9 else 'not met'}")]  # fmt: skip


def section(f: dict) -> str:
    lines = ["| mutant | outcome | seconds |", "|---|---|---|"]
    for o in f["mutants"]:
        state = "killed" if o["killed"] else (f"no verdict: {o['error']}" if o.get("error") else
                                              "survived: " + (o.get("equivalent") or "NOT EXPLAINED"))  # fmt: skip
        lines.append(f"| {o['name']} | {state} | {o['seconds']:.1f} |")
    return ("## 16. Mutation\n\nEach mutant is one realistic slip in a module that guards data, made in a copy of the "
            "repository and run against the tests named with it (`benchmarks/mutation.py`): "
            f"{f['killed']} of {f['total']} killed.\n\n" + "\n".join(lines))  # fmt: skip
