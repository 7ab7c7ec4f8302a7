import msgpack
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from cas import InvalidManifest
from cas.content.digest import chunk_id
from cas.content.tree import FileEntry, Tree, check_path, decode, pack_chunks, root_of

ID = chunk_id(b"x")


def entry(path, size=3, chunks=None, executable=False, file_id=ID):
    chunks = pack_chunks([(ID, size)] if size else []) if chunks is None else chunks
    return [path, size, executable, file_id, chunks]


def doc(*entries, fmt=1):
    return msgpack.packb([fmt, list(entries)], use_bin_type=True)


def test_encoding_is_canonical_and_order_independent():
    a = Tree.build([FileEntry(*entry("b")), FileEntry(*entry("a/c"))])
    b = Tree.build([FileEntry(*entry("a/c")), FileEntry(*entry("b"))])
    assert a.encode() == b.encode()
    assert root_of(a.encode()) == root_of(b.encode())
    assert decode(a.encode(), root_of(a.encode())) == a


def test_root_changes_with_any_field():
    base = Tree.build([FileEntry(*entry("a"))]).encode()
    for changed in (entry("b"), entry("a", executable=True), entry("a", file_id=chunk_id(b"y"))):
        assert root_of(Tree.build([FileEntry(*changed)]).encode()) != root_of(base)


def test_empty_file_has_no_chunks():
    t = Tree.build([FileEntry(*entry("empty", size=0))])
    assert decode(t.encode()).files[0].chunk_count == 0


@pytest.mark.parametrize(
    "path,message",
    [
        ("../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("/etc/passwd", "absolute"),
        ("C:/windows", "absolute"),
        ("c:evil", "absolute"),
        ("a//b", "empty"),
        ("a/./b", "'.'"),
        (".", "'.'"),
        ("a/", "empty"),
        ("", "empty"),
        ("a\\..\\b", "backslash"),
        ("a\x00b", "NUL"),
        ("a\nb", "control"),
        ("x" * 256, "longer than 255"),
        ("a/" * 2100 + "b", "4096"),
    ],
)
def test_hostile_paths_are_refused(path, message):
    with pytest.raises(InvalidManifest, match=message):
        decode(doc(entry(path)))


def test_duplicate_paths_are_refused():
    with pytest.raises(InvalidManifest, match="listed twice"):
        decode(doc(entry("a"), entry("a")))


def test_unsorted_paths_are_refused():
    with pytest.raises(InvalidManifest, match="out of order"):
        decode(doc(entry("b"), entry("a")))


@pytest.mark.parametrize("entries", [(entry("a"), entry("a/b")), (entry("a.txt"), entry("a/b/c"), entry("a/b"))])
def test_a_path_both_file_and_directory_is_refused(entries):
    with pytest.raises(InvalidManifest, match="both a file and a directory|out of order"):
        decode(doc(*entries))


def test_file_and_directory_conflict_even_when_sorted():
    with pytest.raises(InvalidManifest, match="both a file and a directory"):
        decode(doc(entry("a"), entry("a/b")))


def test_chunk_lengths_must_add_up():
    with pytest.raises(InvalidManifest, match="add up to 5 bytes, the file has 3"):
        decode(doc(entry("a", size=3, chunks=pack_chunks([(ID, 2), (ID, 3)]))))


def test_chunk_longer_than_the_chunker_allows():
    with pytest.raises(InvalidManifest, match="outside 1..262144"):
        decode(doc(entry("a", size=300_000, chunks=pack_chunks([(ID, 300_000)]))))


def test_absurd_sizes_are_refused():
    with pytest.raises(InvalidManifest, match="size"):
        decode(doc(entry("a", size=1 << 50, chunks=b"")))
    with pytest.raises(InvalidManifest, match="size"):
        decode(doc(entry("a", size=-1, chunks=b"")))


@pytest.mark.parametrize(
    "raw,message",
    [
        (doc(entry("a"), fmt=2), "format-1"),
        (msgpack.packb({"files": []}), "not valid msgpack|format-1"),
        (msgpack.packb([1, "files"]), "format-1"),
        (msgpack.packb([1, [["a", "3", False, ID, b""]]]), "size"),
        (msgpack.packb([1, [["a", 3, 1, ID, b""]]]), "executable"),
        (msgpack.packb([1, [["a", 3, False, b"short", b""]]]), "file id"),
        (msgpack.packb([1, [["a", 3, False, ID, "text"]]]), "chunk list"),
        (msgpack.packb([1, [["a", 3, False, ID, b"\0" * 35]]]), "chunk list"),
        (msgpack.packb([1, [["a", 3, False, ID]]]), "is not"),
        (msgpack.packb([1, [[b"a", 3, False, ID, b""]]]), "not a string"),
        (msgpack.packb([1, []]), "no files"),
        (b"\x92\x01\x91" + b"\x91" * 100_000 + b"\xc0", "not valid msgpack"),  # nesting meant to exhaust the stack
        (b"\x91" * 100_000 + b"\xc0", "format-1"),
        (b"\xdd\xff\xff\xff\xff", "format-1"),
        (b"\x92\x01\xdd\xff\xff\xff\xff", "tree lists 4294967295 files, more than 1000000"),
        (b"\x92\x01\x91\xdb\xff\xff\xff\xff", "not valid msgpack"),  # a path claiming 4 GB
        (b"\xc1", "format-1"),
        (b"", "format-1"),
        (doc(entry("a"))[:-3], "not valid msgpack"),
        (doc(entry("a")) + b"\x00", "bytes after its last entry"),
    ],
)
def test_malformed_documents_are_refused(raw, message):
    with pytest.raises(InvalidManifest, match=message):
        decode(raw)


def test_non_canonical_encoding_is_refused():
    # the same content with a 32-bit integer where a fixint is canonical
    canonical = doc(entry("a"))
    bloated = canonical.replace(b"\xa1a\x03", b"\xa1a\xce\x00\x00\x00\x03")
    assert bloated != canonical
    with pytest.raises(InvalidManifest, match="canonically"):
        decode(bloated)


def test_root_mismatch_is_refused():
    with pytest.raises(InvalidManifest, match="do not hash"):
        decode(doc(entry("a")), chunk_id(b"other").hex())


tricky = st.sampled_from(["..", ".", "", "C:", "c:evil", "a\\..", "\x00", "/", "a\nb", "x" * 256])
# Control characters and backslashes come from `tricky`; random text without them gets through more often.
segment = st.one_of(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20), tricky)


def test_any_path_accepted_stays_inside_the_directory():
    import posixpath

    accepted = []

    @settings(max_examples=300, deadline=None)
    @given(st.lists(segment, min_size=1, max_size=5))
    def check(parts):
        path = "/".join(parts)
        try:
            check_path(path)
        except InvalidManifest:
            event("refused")
            return
        event("accepted")
        accepted.append(path)
        norm = posixpath.normpath(path)
        assert norm == path
        assert not norm.startswith("/") and ".." not in norm.split("/")
        assert "\\" not in path and "\0" not in path
        assert not (len(path) > 1 and path[1] == ":" and path[0].isascii() and path[0].isalpha())  # no drive letter

    check()
    assert len(accepted) > 30  # the property was tested on paths that pass, not only on refusals


# Tree entries as a repository might send them: any path, sizes that add up or not (None: they do), in
# any order or (as a valid tree has them) sorted; and, so that the property is also exercised on trees that
# decode, well-formed ones of several files (unique sorted paths, lengths that add up), which may still
# clash (a path that is both a file and a directory).
plain_segment = st.text(alphabet="abü._-", min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
plain_entries = st.lists(
    st.builds(
        lambda path, chunks, executable: entry(path, sum(n for _, n in chunks), pack_chunks(chunks), executable),
        st.lists(plain_segment, min_size=1, max_size=3).map("/".join),
        st.lists(st.tuples(st.sampled_from([ID, chunk_id(b"y")]), st.integers(1, 9)), max_size=3),
        st.booleans(),
    ),
    min_size=2,
    max_size=6,
    unique_by=lambda e: e[0],
).map(lambda es: sorted(es, key=lambda e: e[0]))
garbled_entries = st.lists(
    st.builds(
        lambda path, size, executable, chunks: entry(
            path, sum(n for _, n in chunks) if size is None else size, pack_chunks(chunks), executable
        ),
        st.lists(st.one_of(st.sampled_from(["a", "b", "a/b", "ü.bin"]), segment), min_size=1, max_size=3).map("/".join),
        st.one_of(st.none(), st.integers(-1, 12)),
        st.booleans(),
        st.lists(st.tuples(st.sampled_from([ID, chunk_id(b"y")]), st.integers(0, 9)), max_size=3),
    ),
    max_size=6,
).flatmap(lambda es: st.sampled_from([es, sorted(es, key=lambda e: e[0])]))
hostile_entries = st.one_of(garbled_entries, plain_entries)


def test_any_tree_that_decodes_is_safe_to_materialize():
    """Whatever a repository sends, a tree that decodes has unique, contained paths and sizes that add up."""
    import posixpath

    accepted = []

    @settings(max_examples=500, deadline=None)
    @given(hostile_entries)
    def check(files):
        try:
            tree = decode(msgpack.packb([1, files], use_bin_type=True))
        except InvalidManifest:
            event("refused")
            return
        event("accepted")
        accepted.append(len(tree.files))
        paths = [f.path for f in tree.files]
        assert paths == sorted(set(paths))  # sorted, no duplicates
        dirs = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
        for f in tree.files:
            assert posixpath.normpath(f.path) == f.path and not f.path.startswith("/") and ".." not in f.path.split("/")
            assert f.path not in dirs  # never both a file and a directory
            assert sum(n for _, n in f.chunk_list()) == f.size and all(n > 0 for _, n in f.chunk_list())

    check()
    assert sum(1 for n in accepted if n > 1) > 10  # tested on trees that decode, several files each


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5), st.binary(max_size=300))
def test_decode_never_crashes_on_garbage(prefixes, garbage):
    for raw in [garbage, *[doc(entry("a"))[: len(p)] + p for p in prefixes]]:
        try:
            decode(raw)
        except InvalidManifest:
            pass
