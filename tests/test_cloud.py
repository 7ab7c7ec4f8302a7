"""The cloud, as a user meets it: S3 repositories end to end, a static web server (nginx) serving a pushed
folder, pushes racing on one repository, and every fault an object store can answer with.

Everything runs through the real ``cas`` command line and real servers on 127.0.0.1: moto's S3 server,
nginx from the distribution, ``cas serve``, and the fault proxy in front of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cas import Cache

from .conftest import READY, REPO, TOKEN, cas_cli, free_port, start_together, stats, tree_files
from .support.procs import stop
from .support.servers import NGINX_SERVER, S3_CREDENTIALS, start_s3

SERVICE = """
import json, sys, descriptor
class Service:
    model = descriptor.Model(sys.argv[1], remote=sys.argv[2])
m = Service().model
print(json.dumps({"tag": m.tag, "path": str(m.path)}))
"""


def environment(**extra: str) -> dict[str, str]:
    """This process's environment (the fixtures' AWS variables included) with ``extra``."""
    return {**os.environ, **extra}


def service(home: Path, tag: str, remote: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", SERVICE, tag, remote], cwd=REPO, capture_output=True, text=True,
                         env={**env, "CAS_HOME": str(home)}, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The single ``cas: error:`` line a failed command prints, checked to be that and nothing else."""
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.startswith("cas: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr
    for secret in S3_CREDENTIALS.values():
        if secret.startswith("cas-test-secret"):
            assert secret not in out.stdout + out.stderr  # no credential is ever printed
    return out.stderr


# -- S3 ---------------------------------------------------------------------------------------------


def test_push_pull_list_verify_and_a_descriptor_through_s3_are_byte_identical(tmp_path, minilm, s3):
    env = environment()
    cas_cli("add", str(minilm), "minilm:v1", home=tmp_path / "src", env=env)
    pushed = cas_cli("push", "minilm:v1", "--remote", s3, "--json", home=tmp_path / "src", env=env)
    assert json.loads(pushed.stdout)["bytes_transferred"] > 0
    again = cas_cli("push", "minilm:v1", "--remote", s3, "--json", home=tmp_path / "src", env=env)
    assert json.loads(again.stdout)["bytes_transferred"] == 0  # identical content again: nothing to send
    cas_cli("pull", "minilm:latest", "--remote", s3, home=tmp_path / "host", env=env)
    assert tree_files(Cache(tmp_path / "host").materialize("minilm:v1")) == tree_files(minilm)
    listed = json.loads(cas_cli("list", "--remote", s3, "--json", home=tmp_path / "host", env=env).stdout)
    assert [m["tag"] for m in listed] == ["minilm:v1"]
    assert cas_cli("verify", "--remote", s3, "--deep", home=tmp_path / "host", env=env).stdout.startswith("ok:")
    resolved = service(tmp_path / "svc", "minilm:latest", s3, env)
    assert resolved["tag"] == "minilm:v1" and tree_files(Path(resolved["path"])) == tree_files(minilm)


NO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_EC2_METADATA_DISABLED": "true",
                  "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}  # fmt: skip


def test_s3_faults_each_end_in_one_line_naming_the_repository(tmp_path, synthetic, s3):
    cas_cli("add", str(synthetic), "m:v1", home=tmp_path / "src", env=environment())
    cas_cli("push", "m:v1", "--remote", s3, home=tmp_path / "src", env=environment())
    bucket = s3.split("/")[2]
    cases = {
        "a bucket that does not exist": (["pull", "m:v1", "--remote", "s3://no-such-bucket/m"], {},
                                         "NoSuchBucket (the bucket does not exist: create it"),
        "a prefix with nothing in it": (["pull", "m:v1", "--remote", f"s3://{bucket}/empty"], {},
                                        f"model m:v1 is not in the repository s3://{bucket}/empty"),
        "an endpoint that is down": (["pull", "m:v1", "--remote", s3],
                                     {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, "cannot connect to"),
        "no credentials at all": (["pull", "m:v1", "--remote", s3], NO_CREDENTIALS,
                                  "no AWS credentials: set AWS_ACCESS_KEY_ID"),
    }  # fmt: skip
    for what, (args, extra, said) in cases.items():
        env = {k: v for k, v in environment(**extra).items() if v != ""}
        message = one_line_error(cas_cli(*args, home=tmp_path / "host", env=env, check=False))
        assert said in message, f"{what}: {message}"
    assert Cache(tmp_path / "host").list() == []


def test_wrong_credentials_are_one_line_and_never_printed(tmp_path, synthetic):
    """A server that checks credentials (moto with authentication on), given keys it does not know."""
    proc, endpoint = start_s3(tmp_path / "s3-auth", env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        env = environment(**S3_CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
        message = one_line_error(cas_cli("pull", "m:v1", "--remote", "s3://some-bucket/m", home=tmp_path / "host",
                                         env=env, check=False))  # fmt: skip
        assert "InvalidAccessKeyId (the AWS access key is not known there: check AWS_ACCESS_KEY_ID" in message
    finally:
        stop(proc)


@pytest.mark.parametrize("fault", ["403", "flip", "slowdown"])
def test_a_permanent_fault_on_a_pack_stores_nothing_and_the_pull_later_resumes(tmp_path, minilm, s3, proxy, fault):
    env = environment()
    cas_cli("add", str(minilm), "minilm:v1", home=tmp_path / "src", env=env)
    cas_cli("push", "minilm:v1", "--remote", s3, home=tmp_path / "src", env=env)
    front = proxy(env["AWS_ENDPOINT_URL"], fault, every=1)
    failed = cas_cli("pull", "minilm:v1", "--remote", s3, home=tmp_path / "host",
                     env={**env, "AWS_ENDPOINT_URL": front, "CAS_PULL_PROCESSES": "0"}, check=False)  # fmt: skip
    message = one_line_error(failed)
    said = {"403": "AccessDenied (access denied: check the AWS credentials", "flip": "failed verification 4 times",
            "slowdown": "SlowDown (throttled after every retry"}[fault]  # fmt: skip
    assert said in message and s3 in message
    assert Cache(tmp_path / "host").list() == []
    cas_cli("pull", "minilm:v1", "--remote", s3, home=tmp_path / "host", env=env)  # the store answers again
    assert tree_files(Cache(tmp_path / "host").materialize("minilm:v1")) == tree_files(minilm)


def test_throttling_and_cut_bodies_are_retried(tmp_path, synthetic, s3, proxy):
    env = environment()
    cas_cli("add", str(synthetic), "m:v1", home=tmp_path / "src", env=env)
    cas_cli("push", "m:v1", "--remote", s3, home=tmp_path / "src", env=env)
    for fault in ("slowdown", "truncate", "500"):
        front = proxy(env["AWS_ENDPOINT_URL"], fault, every=2)
        cas_cli("pull", "m:v1", "--remote", s3, home=tmp_path / fault, env={**env, "AWS_ENDPOINT_URL": front})
        assert tree_files(Cache(tmp_path / fault).materialize("m:v1")) == tree_files(synthetic)
        assert stats(front)["faults"] > 0


# -- a static web server ---------------------------------------------------------------------------------


def test_nginx_serves_a_pushed_folder_read_only_latest_and_listing_included(tmp_path, minilm, synthetic, nginx):
    folder = tmp_path / "repo"
    src = tmp_path / "src"
    cas_cli("add", str(synthetic), "minilm:v1", home=src)
    cas_cli("add", str(minilm), "minilm:v2", home=src)
    cas_cli("add", str(synthetic), "head:v1", home=src)
    for tag in ("minilm:v1", "minilm:v2", "head:v1"):
        cas_cli("push", tag, "--remote", f"file://{folder}", home=src)
    url = nginx(folder)
    cas_cli("pull", "minilm:latest", "--remote", url, home=tmp_path / "host")
    assert tree_files(Cache(tmp_path / "host").materialize("minilm:v2")) == tree_files(minilm)
    listed = json.loads(cas_cli("list", "--remote", url, "--json", home=tmp_path / "host").stdout)
    assert sorted(m["tag"] for m in listed) == ["head:v1", "minilm:v1", "minilm:v2"]
    assert cas_cli("verify", "--remote", url, "--deep", home=tmp_path / "host").stdout.startswith("ok:")
    resolved = service(tmp_path / "svc", "minilm:latest", url, environment())
    assert resolved["tag"] == "minilm:v2"
    message = one_line_error(cas_cli("push", "head:v1", "--remote", url, home=src, check=False))
    assert "does not accept uploads" in message and "CAS_TOKEN" not in message


def test_a_server_answering_garbage_is_one_line_not_a_traceback(tmp_path, server, proxy):
    url, _ = server
    garbage = proxy(url, "garbage")
    for args in (
        ["pull", "m:latest"],
        ["pull", "m:v1"],
        ["list", "--remote", garbage],
        ["verify", "--remote", garbage],
    ):
        if args[0] == "pull":
            args = [*args, "--remote", garbage]
        message = one_line_error(cas_cli(*args, "--remote", garbage, home=tmp_path / "host", check=False))
        assert garbage in message, message


# -- pushes racing on one repository -------------------------------------------------------------------

PUSH = f"import sys; from cas.cli import main; {READY}; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(params=["file", "cas serve", "s3", "oci"])
def repository(request, tmp_path) -> tuple[str, dict[str, str]]:
    """A fresh writable repository of each kind, and the environment that writes to it."""
    if request.param == "oci":
        base, _ = request.getfixturevalue("registry")()
        return f"oci://{base.removeprefix('http://')}/team", environment()
    if request.param == "file":
        return f"file://{tmp_path / 'repo'}", environment()
    if request.param == "cas serve":
        return request.getfixturevalue("server")[0], environment(CAS_TOKEN=TOKEN)
    return request.getfixturevalue("s3"), environment()


def test_two_hosts_pushing_one_version_with_other_content_one_wins(tmp_path, synthetic, minilm, repository):
    url, env = repository
    homes = {tmp_path / "a": synthetic, tmp_path / "b": minilm}
    for home, model in homes.items():
        cas_cli("add", str(model), "m:v1", home=home, env=env)
    procs = start_together([[sys.executable, "-c", PUSH, "--home", str(h), "push", "m:v1", "--remote", url]
                            for h in homes], env, stderr=subprocess.PIPE)  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    loser = next(err for p, (_, err) in zip(procs, outs) if p.returncode == 1)
    assert "already exists in" in loser and "with other content" in loser and loser.count("\n") == 1
    winner = next(model for p, model in zip(procs, homes.values()) if p.returncode == 0)
    cas_cli("pull", "m:v1", "--remote", url, home=tmp_path / "host", env=env)
    assert tree_files(Cache(tmp_path / "host").materialize("m:v1")) == tree_files(winner)


def test_racing_pushes_of_new_versions_all_land_in_the_listing(tmp_path, synthetic, repository):
    url, env = repository
    homes = [tmp_path / f"h{i}" for i in range(4)]
    for i, home in enumerate(homes):
        cas_cli("add", str(synthetic), f"m:v{i}", "--label", f"n={i}", home=home, env=env)
    procs = start_together([[sys.executable, "-c", PUSH, "--home", str(h), "push", f"m:v{i}", "--remote", url]
                            for i, h in enumerate(homes)], env)  # fmt: skip
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    listed = json.loads(cas_cli("list", "--remote", url, "m", "--json", home=tmp_path / "host", env=env).stdout)
    assert sorted(m["tag"] for m in listed) == [f"m:v{i}" for i in range(4)]
    cas_cli("pull", "m:latest", "--remote", url, home=tmp_path / "host", env=env)
    # latest is the push the repository committed last, which its listing shows first
    assert Cache(tmp_path / "host").get("m:latest").tag == listed[0]["tag"]


def test_the_docs_show_the_nginx_configuration_the_tests_run():
    page = (REPO / "docs" / "repositories.md").read_text()
    assert NGINX_SERVER.format(port=8000, repo="/srv/cas-repo") in page


def test_a_wrong_token_is_said_but_never_printed(tmp_path, synthetic, server):
    url, _ = server
    secret = "wrong-token-5f1c9a"
    cas_cli("add", str(synthetic), "m:v1", home=tmp_path / "src")
    message = one_line_error(cas_cli("push", "m:v1", "--remote", url, home=tmp_path / "src",
                                     env=environment(CAS_TOKEN=secret), check=False))  # fmt: skip
    assert "403 Forbidden; check CAS_TOKEN" in message and secret not in message
