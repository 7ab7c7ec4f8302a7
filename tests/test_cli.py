"""The cas command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, cas_cli, published, tree_files


def test_add_list_show_materialize_rm(tmp_path, minilm):
    home = tmp_path / "home"
    out = cas_cli("add", str(minilm), "minilm:v1", "--label", "team=nlp", "--metadata", "dim=384", home=home)
    assert out.stdout.startswith("minilm:v1 ")
    listed = json.loads(cas_cli("list", "--json", home=home).stdout)
    assert [m["tag"] for m in listed] == ["minilm:v1"]
    assert listed[0]["labels"] == {"team": "nlp"} and listed[0]["metadata"] == {"dim": 384}
    table = cas_cli("list", home=home).stdout
    assert table.splitlines()[0].split() == ["TAG", "SIZE", "FILES", "CREATED", "ROOT", "LABELS"]
    assert "minilm:v1" in table and "team=nlp" in table

    shown = json.loads(cas_cli("show", "minilm", "--json", home=home).stdout)
    assert shown["root"] == listed[0]["root"]
    assert {f["path"] for f in shown["files"]} == set(tree_files(minilm))
    text = cas_cli("show", "minilm:v1", home=home).stdout
    assert "model.safetensors" in text and listed[0]["root"] in text

    path = cas_cli("materialize", "minilm:latest", home=home).stdout.strip()
    assert tree_files(Path(path)) == tree_files(minilm)

    verify = cas_cli("verify", "--json", home=home)
    assert json.loads(verify.stdout)["ok"] is True

    assert cas_cli("rm", "minilm:v1", home=home).stdout.strip() == "removed minilm:v1"
    assert json.loads(cas_cli("list", "--json", home=home).stdout) == []


def test_errors_are_one_line_with_exit_code_1(tmp_path):
    home = tmp_path / "home"
    for args, needle in [
        (("add", str(tmp_path / "missing"), "m"), "does not exist"),
        (("add", str(tmp_path), "Bad Tag"), "invalid tag"),
        (("show", "ghost:v1"), "is not in the cache"),
        (("rm", "ghost"), "is not in the cache"),
        (("add", str(tmp_path), "m", "--label", "novalue"), "expected KEY=VALUE"),
    ]:
        proc = cas_cli(*args, home=home, check=False)
        assert proc.returncode == 1, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cas: error: ") and needle in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr


def test_usage_errors_exit_2(tmp_path):
    for args in (("bogus",), ("add",), ()):
        proc = cas_cli(*args, home=tmp_path, check=False)
        assert proc.returncode == 2, args


def test_debug_shows_the_traceback(tmp_path):
    proc = cas_cli("show", "ghost:v1", "--debug", home=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "NotFound" in proc.stderr


def test_home_flag_overrides_cas_home(tmp_path, synthetic):
    other = tmp_path / "other"
    cas_cli("--home", str(other), "add", str(synthetic), "m:v1", home=tmp_path / "env")
    assert (other / "refs" / "m" / "v1").is_file()
    assert not (tmp_path / "env").exists()


def test_verify_exit_code_reflects_damage(tmp_path, synthetic):
    home = tmp_path / "home"
    cas_cli("add", str(synthetic), "m:v1", home=home)
    blob = next(p for p in (home / "blobs").rglob("*") if p.is_file())
    blob.unlink()
    proc = cas_cli("verify", home=home, check=False)
    assert proc.returncode == 1 and "missing:" in proc.stdout and "DAMAGED" in proc.stdout


def test_materialize_pulls_a_model_that_is_not_here_as_a_service_would(tmp_path, synthetic, server, token):
    url, _ = server
    published(tmp_path, synthetic, "m:v1", url)
    env = {**os.environ, "CAS_REMOTE": url}
    path = Path(cas_cli("materialize", "m:latest", home=tmp_path / "host", env=env).stdout.strip())
    assert tree_files(path) == tree_files(synthetic)
    offline = cas_cli("materialize", "m:v1", home=tmp_path / "other", env={**env, "CAS_OFFLINE": "1"}, check=False)
    assert (
        offline.returncode == 1
        and "CAS_OFFLINE is set, so it was not pulled: unset CAS_OFFLINE to pull it, or store it with 'cas add PATH m'"
        in offline.stderr
    )  # not "set CAS_REMOTE": it is set


def test_version_comes_from_the_package_metadata(tmp_path):
    from importlib.metadata import version

    out = cas_cli("--version", home=tmp_path / "cache")
    assert out.stdout == f"cas {version('cas')}\n"


def test_a_relative_file_url_is_refused_and_nothing_is_written_at_the_root(tmp_path, synthetic):
    """``file://models/x`` names the host "models": it was taken as ``/x`` and a push made a folder there."""
    import uuid

    home = tmp_path / "cache"
    cas_cli("add", str(synthetic), "m:v1", home=home)
    name = f"cas-test-{uuid.uuid4().hex[:8]}"
    for args in (["push", "m:v1", "--remote", f"file://models/{name}"], ["list", "--remote", f"file://models/{name}"]):
        out = cas_cli(*args, home=home, check=False)
        assert out.returncode == 1
        assert out.stderr.startswith(f"cas: error: file:// URLs take an absolute path: file:///abs/path (got "
                                     f"'file://models/{name}'); a relative folder")  # fmt: skip
    assert not os.path.exists(f"/{name}")


HOSTILE_LABELS = {"title": "\x1b]0;pwned\x07\x1b[2J", "note": "line\nfake: row", "bento": "\x9b31m"}


def test_control_characters_from_a_model_are_printed_escaped_and_json_stays_exact(tmp_path, synthetic):
    """A label (or metadata, or a message) that a repository or foreign store wrote must not retitle, clear or
    recolour the user's terminal, nor fake a line: `list`, `list --remote`, `show` print it escaped."""
    from cas import Cache

    src = Cache(tmp_path / "src")
    src.add(synthetic, "m:v1", labels=HOSTILE_LABELS, metadata={"module": "x\x1b[31m"})
    repo = f"file://{tmp_path / 'repo'}"
    src.push("m:v1", repo)
    home = tmp_path / "cache"
    cas_cli("pull", "m:v1", "--remote", repo, home=home)
    for args in (["list"], ["list", "--remote", repo], ["show", "m:v1"]):
        out = cas_cli(*args, home=home).stdout
        assert not any(c in out for c in "\x1b\x07\x9b"), (args, out)
        assert "\\x1b]0;pwned\\x07\\x1b[2J" in out and "line\\x0afake: row" in out and "\\x9b31m" in out
    listed = json.loads(cas_cli("list", "--json", home=home).stdout)
    assert listed[0]["labels"] == HOSTILE_LABELS  # exact, as JSON escapes it


def test_an_error_message_is_printed_escaped(tmp_path):
    out = cas_cli("pull", "m:v1", "--remote", "file:///nonexistent/\x1b[2Jrepo", home=tmp_path / "c", check=False)
    assert out.returncode == 1 and "\x1b" not in out.stderr and "\\x1b[2Jrepo" in out.stderr


def test_list_remote_without_a_url_lists_cas_remote(tmp_path, minilm):
    """`cas list --remote` alone reads the repository `$CAS_REMOTE` names, as every other command does."""
    repo = f"file://{tmp_path / 'repo'}"
    cas_cli("add", str(minilm), "minilm:v1", home=tmp_path / "pub")
    cas_cli("push", "minilm:v1", "--remote", repo, home=tmp_path / "pub")
    env = {**os.environ, "CAS_REMOTE": repo}
    listed = json.loads(cas_cli("list", "--remote", "--json", home=tmp_path / "host", env=env).stdout)
    assert [i["tag"] for i in listed] == ["minilm:v1"] and "files_here" not in listed[0]
    assert json.loads(cas_cli("list", "--json", home=tmp_path / "host", env=env).stdout) == []  # the cache: empty


def test_a_bare_remote_option_means_cas_remote_on_every_command(tmp_path, synthetic):
    """`--remote` alone is `$CAS_REMOTE`'s repository on every command, as the docs say, not only on `list`:
    push, pull --dry-run, pull, materialize, checkout, verify, rm and prune, each against the one repository."""
    repo = tmp_path / "repo"
    env = {**os.environ, "CAS_REMOTE": f"file://{repo}"}

    def run(*args: str, home: str = "host") -> str:
        return cas_cli(*args, home=tmp_path / home, env=env).stdout

    run("add", str(synthetic), "m:v1", home="pub")
    run("push", "m:v1", "--remote", home="pub")
    assert (repo / "refs" / "m" / "v1").is_file()
    assert "m:v1" in run("pull", "m:v1", "--remote", "--dry-run")
    run("pull", "m:v1", "--remote")
    run("rm", "m:v1")
    assert tree_files(Path(run("materialize", "m:v1", "--remote").strip())) == tree_files(synthetic)
    run("checkout", "m:v1", str(tmp_path / "out"), "--remote")
    assert "clean" in run("status", str(tmp_path / "out"))
    assert "ok: checked 1 models and 1 packs" in run("verify", "--remote")  # the repository's check, not the cache's
    assert "removed m:v1" in run("rm", "m:v1", "--remote")
    assert not (repo / "refs" / "m" / "v1").exists()
    run("prune", "--remote")
    assert run("list", "--remote").strip().count("\n") == 0  # the header alone


def test_a_model_name_typed_as_the_remote_of_list_says_how_to_list_it(tmp_path, synthetic):
    """`cas list --remote classifier` with `$CAS_REMOTE` set: the user meant the model, so the one line names the
    command that lists it, and that command works."""
    repo = f"file://{tmp_path / 'repo'}"
    cas_cli("add", str(synthetic), "classifier:v1", home=tmp_path / "pub")
    cas_cli("push", "classifier:v1", "--remote", repo, home=tmp_path / "pub")
    env = {**os.environ, "CAS_REMOTE": repo}
    out = cas_cli("list", "--remote", "classifier", home=tmp_path / "host", env=env, check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "(no such folder)" in out.stderr and out.stderr.rstrip().endswith("cas list classifier --remote")
    listed = cas_cli("list", "classifier", "--remote", home=tmp_path / "host", env=env).stdout
    assert "classifier:v1" in listed
    env.pop("CAS_REMOTE")  # with no $CAS_REMOTE to list it from, the command would fail: no such hint
    out = cas_cli("list", "--remote", "classifier", home=tmp_path / "host", env=env, check=False)
    assert out.returncode == 1 and "(no such folder)" in out.stderr and "put its name first" not in out.stderr


def test_a_repository_folder_that_is_not_there_is_an_error_not_an_empty_repository(tmp_path, synthetic):
    """`cas list --remote classifier` reads `classifier` as the repository (a folder): a mistyped URL must say
    so, not list nothing; a push still starts a repository in a new folder."""
    typo = str(tmp_path / "classifier")
    for args in (["list", "--remote", typo], ["verify", "--remote", typo], ["pull", "m:v1", "--remote", typo]):
        out = cas_cli(*args, home=tmp_path / "host", check=False)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert f"there is no repository at file://{tmp_path / 'classifier'} (no such folder)" in out.stderr
    assert not (tmp_path / "classifier").exists()
    cas_cli("add", str(synthetic), "m:v1", home=tmp_path / "pub")
    cas_cli("push", "m:v1", "--remote", str(tmp_path / "new" / "repo"), home=tmp_path / "pub")
    assert "m:v1" in cas_cli("list", "--remote", str(tmp_path / "new" / "repo"), home=tmp_path / "host").stdout
    keys = [str(tmp_path / k) for k in ("root.key", "online.key")]
    for k in keys:
        cas_cli("keygen", k, home=tmp_path / "pub")
    cas_cli("trust", "init", f"file://{tmp_path / 'signed'}", "--root", keys[0], "--online", keys[1], "--policy",
            str(tmp_path / "policy.json"), home=tmp_path / "pub")  # fmt: skip
    assert (tmp_path / "signed" / "trust" / "state").is_file()


def test_credentials_in_a_repository_url_are_refused_and_never_printed(tmp_path):
    """A token belongs in CAS_TOKEN: a URL carrying one (user:password@, ?token=) would print and log it."""
    for url in ("http://user:s3cret@127.0.0.1:9/repo", "https://127.0.0.1:9/repo?token=s3cret"):
        out = cas_cli("list", "--remote", url, home=tmp_path / "host", check=False)
        assert out.returncode == 1 and "carries no user, password or query" in out.stderr, out.stderr
        assert "s3cret" not in out.stderr + out.stdout
        env = {**os.environ, "CAS_REMOTE": url}
        code = "import cas\ntry:\n    cas.resolve('m:latest')\nexcept cas.CasError as e:\n    print(e)"
        said = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "CAS_HOME": str(tmp_path / "h")},
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert "carries no user" in said.stdout and "s3cret" not in said.stdout + said.stderr


def test_pulling_a_version_already_here_says_so(tmp_path, minilm):
    repo = f"file://{tmp_path / 'repo'}"
    cas_cli("add", str(minilm), "minilm:v1", home=tmp_path / "pub")
    cas_cli("push", "minilm:v1", "--remote", repo, home=tmp_path / "pub")
    first = cas_cli("pull", "minilm:v1", "--remote", repo, home=tmp_path / "host").stdout
    again = cas_cli("pull", "minilm:v1", "--remote", repo, home=tmp_path / "host").stdout
    assert first.startswith("pulled minilm:v1") and "fetched" in first
    assert again.startswith("minilm:v1 (") and "is here already: nothing was fetched" in again
    cas_cli("add", str(minilm), "copy:v1", home=tmp_path / "pub")  # a new version of files the host holds
    cas_cli("push", "copy:v1", "--remote", repo, home=tmp_path / "pub")
    new = cas_cli("pull", "copy:v1", "--remote", repo, home=tmp_path / "host").stdout
    assert new.startswith("pulled copy:v1") and "fetched 0 B" in new, new


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "1e9"])
@pytest.mark.parametrize("url", ["http://127.0.0.1:9/repo", "s3://bucket/models", "oci://127.0.0.1:9/team"])
def test_a_stall_timeout_that_is_not_a_duration_is_one_line_naming_it(tmp_path, url, value):
    """`CAS_STALL_TIMEOUT=abc` was a traceback from deep in the HTTP store; every store reads it the same way."""
    env = {**os.environ, "CAS_STALL_TIMEOUT": value}
    out = cas_cli("pull", "m:v1", "--remote", url, home=tmp_path / "host", env=env, check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert f"CAS_STALL_TIMEOUT='{value}' is not a number of seconds from 0.1 to 3600" in out.stderr


def test_a_registry_settle_time_that_is_not_a_duration_is_one_line_naming_it(tmp_path):
    env = {**os.environ, "CAS_REGISTRY_SETTLE": "soon"}
    out = cas_cli("pull", "m:v1", "--remote", "oci://127.0.0.1:9/team", home=tmp_path / "host", env=env, check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "CAS_REGISTRY_SETTLE='soon' is not a number of seconds from 0 to 60" in out.stderr
