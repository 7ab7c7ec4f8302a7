"""`cas verify --remote`: a repository's refs, trees, locators and packs agree, or the damage is named."""

from __future__ import annotations

from cas import Cache, check_repository

from .conftest import cas_cli


def _pushed(tmp_path, synthetic) -> tuple[str, object]:
    src = Cache(tmp_path / "src")
    info = src.add(synthetic, "m:v1")
    repo = tmp_path / "repo"
    src.push("m:v1", f"file://{repo}")
    return f"file://{repo}", info


def test_a_clean_repository_checks_out_deep_and_through_the_cli(tmp_path, synthetic):
    url, _ = _pushed(tmp_path, synthetic)
    report = check_repository(url, deep=True)
    assert report.ok and report.refs == 1 and report.packs >= 1 and report.orphans == []
    out = cas_cli("verify", "--remote", url, "--deep", home=tmp_path / "any")
    assert "ok: checked 1 models" in out.stdout


def test_a_missing_pack_is_named_with_the_tag_that_needs_it(tmp_path, synthetic):
    url, _ = _pushed(tmp_path, synthetic)
    pack = next(p for p in (tmp_path / "repo" / "packs").iterdir() if "." not in p.name)
    pack.unlink()
    (tmp_path / "repo" / "packs" / f"{pack.name}.idx").unlink()
    report = check_repository(url)
    assert not report.ok
    assert any(p.startswith("m:v1: ") and f"missing pack {pack.name}" in p for p in report.problems)
    out = cas_cli("verify", "--remote", url, home=tmp_path / "any", check=False)
    assert out.returncode == 1 and "DAMAGED" in out.stdout


def test_a_flipped_byte_in_a_pack_is_found_by_the_deep_check(tmp_path, synthetic):
    url, _ = _pushed(tmp_path, synthetic)
    pack = next(p for p in (tmp_path / "repo" / "packs").iterdir() if "." not in p.name)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 1
    pack.write_bytes(bytes(data))
    assert check_repository(url).ok  # shallow: sizes and names only
    report = check_repository(url, deep=True)
    damaged, misnamed = report.problems  # the chunk holding the byte is named, then the pack
    assert damaged.startswith(f"packs/{pack.name}: chunk ") and "do not match the chunk id" in damaged
    assert misnamed == f"packs/{pack.name}: its bytes do not hash to its name"


def test_a_ref_naming_a_missing_tree_and_an_orphan_pack(tmp_path, synthetic):
    url, info = _pushed(tmp_path, synthetic)
    (tmp_path / "repo" / "trees" / info.root).unlink()
    (tmp_path / "repo" / "packs" / ("ab" * 32)).write_bytes(b"left by an interrupted push")
    report = check_repository(url)
    assert len(report.problems) == 1 and report.problems[0].startswith("m:v1: ")
    assert report.orphans == [f"packs/{'ab' * 32}: a pack without an index"]


def test_two_swapped_locator_entries_are_found_by_the_deep_check(tmp_path, synthetic):
    """Each entry still points inside a pack, at another chunk: the deep check proves every entry against the
    bytes it points at (a pull then failed "verification" while verify said ok)."""
    import os

    from cas.repo.format import decode_locator, encode_locator

    url, info = _pushed(tmp_path, synthetic)
    path = tmp_path / "repo" / "locators" / info.root
    locations = decode_locator(path.read_bytes())
    a, b = sorted(locations)[:2]
    locations[a], locations[b] = locations[b], locations[a]
    os.chmod(path, 0o644)
    path.write_bytes(encode_locator(locations))
    report = check_repository(url, deep=True)
    assert len(report.problems) == 2 and all("the locator places chunk" in p for p in report.problems), report
    out = cas_cli("verify", "--remote", url, "--deep", home=tmp_path / "any", check=False)
    assert out.returncode == 1 and "DAMAGED" in out.stdout
