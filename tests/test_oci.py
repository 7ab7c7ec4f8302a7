"""``oci://`` repositories end to end, as a user meets them: the real ``cas`` command line and a descriptor
against Debian's CNCF distribution registry (open, htpasswd, token service), skopeo reading what cas wrote,
delta pulls counted at a proxy in front of the registry, removal and prune as the registry sees them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cas import Cache, RepoError
from cas.repo.ocilayout import parse_url
from cas.repo.stores import open_backend

from .conftest import cas_cli, missing, stats, tree_files
from .support.procs import stop
from .support.registry import PASSWORD, USER, registry_binary, start_registry
from .support.servers import S3_CREDENTIALS, make_bucket
from .test_cloud import environment, one_line_error, service


def own_registry(work: Path, **config) -> tuple[subprocess.Popen, str]:
    """A registry configured otherwise than the ``registry`` fixture's (stopped by the caller)."""
    if registry_binary() is None:
        missing("docker-registry (apt-get install docker-registry; bash dev test does it as root)")
    work.mkdir()
    proc, base, _ = start_registry(work, **config)
    return proc, base


def oci_url(base: str, namespace: str = "team") -> str:
    return f"oci://{base.removeprefix('http://')}/{namespace}"


def skopeo(*args: str, creds: bool = False) -> str:
    tool = shutil.which("skopeo")
    if tool is None:
        missing("skopeo (apt-get install skopeo; bash dev test does it as root)")
    extra = [f"--creds={USER}:{PASSWORD}"] if creds else []
    return subprocess.run([tool, *args, "--tls-verify=false", *extra], capture_output=True, text=True, check=True,
                          timeout=120).stdout  # fmt: skip


@pytest.mark.parametrize("auth", ["none", "basic", "token"])
def test_push_pull_list_verify_and_a_descriptor_through_a_registry(tmp_path, minilm, registry, auth):
    base, tokens = registry(auth)
    url = oci_url(base)
    creds = {"CAS_REGISTRY_USERNAME": USER, "CAS_REGISTRY_PASSWORD": PASSWORD} if auth != "none" else {}
    # a worker process pushes and one fetches: each finds the credentials and answers the registry's challenge
    env = environment(**creds, CAS_PUSH_PROCESSES="1", CAS_PULL_PROCESSES="1")
    cas_cli("add", str(minilm), "minilm:v1", home=tmp_path / "src", env=env)
    pushed = json.loads(cas_cli("push", "minilm:v1", "--remote", url, "--json", home=tmp_path / "src", env=env).stdout)
    assert pushed["bytes_transferred"] > 0
    again = json.loads(cas_cli("push", "minilm:v1", "--remote", url, "--json", home=tmp_path / "src", env=env).stdout)
    assert again["bytes_transferred"] == 0
    cas_cli("pull", "minilm:latest", "--remote", url, home=tmp_path / "host", env=env)
    assert tree_files(Cache(tmp_path / "host").materialize("minilm:v1")) == tree_files(minilm)
    listed = json.loads(cas_cli("list", "--remote", url, "--json", home=tmp_path / "host", env=env).stdout)
    assert [m["tag"] for m in listed] == ["minilm:v1"]
    assert cas_cli("verify", "--remote", url, "--deep", home=tmp_path / "host", env=env).stdout.startswith("ok:")
    resolved = service(tmp_path / "svc", "minilm:latest", url, env)
    assert resolved["tag"] == "minilm:v1" and tree_files(Path(resolved["path"])) == tree_files(minilm)
    # the registry's own view, through an independent client: the model is a repository, the version a tag whose
    # manifest's config is the ref record and whose layers are everything the version needs
    host = base.removeprefix("http://")
    assert json.loads(skopeo("list-tags", f"docker://{host}/team/minilm", creds=bool(creds)))["Tags"] == ["v1"]
    manifest = json.loads(skopeo("inspect", "--raw", f"docker://{host}/team/minilm:v1", creds=bool(creds)))
    assert manifest["artifactType"] == "application/vnd.cas.model.v1"
    kinds = [layer["annotations"]["dev.cas.key"].split("/")[0] for layer in manifest["layers"]]
    assert kinds[:2] == ["trees", "locators"] and kinds[2:] and set(kinds[2:]) == {"packs"}
    if tokens:
        assert tokens.requests >= 2


def test_a_delta_pull_fetches_little_more_than_the_change_counted_at_the_registry(tmp_path, tuned, registry,
                                                                                   proxy):  # fmt: skip
    base, _ = registry()
    url = oci_url(base)
    src = Cache(tmp_path / "src")
    src.add(tuned["base"], "m:base")
    src.add(tuned["tuned"], "m:tuned")
    src.push("m:base", url)
    pushed = src.push("m:tuned", url)
    assert pushed.bytes_uploaded < 0.2 * pushed.info.size  # the push sent only the new chunks, too
    front = proxy(base)
    counted = oci_url(front)
    host = Cache(tmp_path / "host")
    host.pull("m:base", counted)
    before = stats(front)["pack_bytes"]
    delta = host.pull("m:tuned", counted)
    moved = stats(front)["pack_bytes"] - before
    assert moved <= 1.2 * tuned["changed"] and moved <= 0.15 * delta.info.size
    assert tree_files(host.materialize("m:tuned")) == tree_files(tuned["tuned"])


def test_removal_and_prune_leave_the_registry_holding_only_what_refs_reach(tmp_path, tuned, registry):
    base, _ = registry()
    url = oci_url(base)
    host = base.removeprefix("http://")
    src = Cache(tmp_path / "src")
    src.add(tuned["base"], "m:base")
    src.add(tuned["tuned"], "m:tuned")
    src.push("m:base", url)
    src.push("m:tuned", url)
    env = environment()
    cas_cli("rm", "m:base", "--remote", url, home=tmp_path / "src", env=env)
    assert json.loads(skopeo("list-tags", f"docker://{host}/team/m"))["Tags"] == ["tuned"]
    for _ in range(2):  # mark, then delete (and repack what is mostly dead)
        cas_cli("prune", "--remote", url, "--grace", "0", "--max-unused", "1", home=tmp_path / "src", env=env)
    pool = set(json.loads(skopeo("list-tags", f"docker://{host}/team/cas/objects"))["Tags"])
    manifest = json.loads(skopeo("inspect", "--raw", f"docker://{host}/team/m:tuned"))
    packs = {f"pack-{layer['annotations']['dev.cas.key'].split('/')[1]}" for layer in manifest["layers"]
             if layer["annotations"]["dev.cas.key"].startswith("packs/")}  # fmt: skip
    # the version's manifest names exactly the packs the pool still holds: what the registry's GC keeps
    assert packs == {t for t in pool if t.startswith("pack-")}
    c = Cache(tmp_path / "host")
    c.pull("m:tuned", url)
    assert tree_files(c.materialize("m:tuned")) == tree_files(tuned["tuned"])
    assert cas_cli("verify", "--remote", url, "--deep", home=tmp_path / "src", env=env).stdout.startswith("ok:")


def test_wrong_credentials_are_one_line_and_never_printed(tmp_path, synthetic, registry):
    base, _ = registry("basic")
    env = environment(CAS_REGISTRY_USERNAME=USER, CAS_REGISTRY_PASSWORD="not-the-password-5e1")
    cas_cli("add", str(synthetic), "m:v1", home=tmp_path / "src", env=env)
    out = cas_cli("push", "m:v1", "--remote", oci_url(base), home=tmp_path / "src", env=env, check=False)
    line = one_line_error(out)
    assert "CAS_REGISTRY_USERNAME" in line and "not-the-password-5e1" not in out.stdout + out.stderr


def test_a_model_name_the_registry_cannot_hold_is_refused_in_one_line(tmp_path, synthetic, registry):
    base, _ = registry()
    env = environment()
    cas_cli("add", str(synthetic), "a..b:v1", home=tmp_path / "src", env=env)
    out = cas_cli("push", "a..b:v1", "--remote", oci_url(base), home=tmp_path / "src", env=env, check=False)
    assert "cannot be a registry repository name" in one_line_error(out)


@pytest.mark.parametrize(
    ("url", "base"),
    [("oci://127.0.0.1:5000/team", "http://127.0.0.1:5000"), ("oci://localhost/a/b", "http://localhost"),
     ("oci://registry.example.com/ml", "https://registry.example.com"),
     ("oci+http://10.0.0.5:5000/ml", "http://10.0.0.5:5000"), ("oci+https://localhost:5000/ml", "https://localhost:5000")],
)  # fmt: skip
def test_plain_http_only_for_this_host_or_when_asked(url, base):
    assert parse_url(url).base == base


@pytest.mark.parametrize("url", ["oci://user:secret@registry.example.com/ml", "oci://registry.example.com/Team",
                                 "oci://registry.example.com/a..b", "oci:///team"])  # fmt: skip
def test_a_registry_url_that_cannot_be_used_is_refused_in_one_line(url):
    with pytest.raises(RepoError) as e:
        parse_url(url)
    assert "secret" not in str(e.value) and "\n" not in str(e.value)


def test_a_registry_answering_garbage_is_one_line_not_a_traceback(tmp_path, synthetic, registry, proxy):
    base, _ = registry()
    cas_cli("add", str(synthetic), "m:v1", home=tmp_path / "src")
    cas_cli("push", "m:v1", "--remote", oci_url(base), home=tmp_path / "src")
    garbage = oci_url(proxy(base, "garbage"))
    for command in (["pull", "m:v1"], ["list"], ["verify"]):
        out = cas_cli(*command, "--remote", garbage, home=tmp_path / "host", check=False)
        one_line_error(out)
    assert not (tmp_path / "host" / "refs").exists() or not any((tmp_path / "host" / "refs").rglob("*"))


def test_a_signed_push_shows_its_signature_as_a_referrer_of_the_version(tmp_path, registry):
    from cas.trust.keys import generate

    from .test_trust import publish_model, setup_signing

    folder = tmp_path / "keys"
    folder.mkdir()
    for name in ("root", "online", "team-a", "team-b", "team-a-new"):
        generate(folder / f"{name}.key")
    keys = {p.stem: p for p in folder.glob("*.key")}
    base, _ = registry()
    url = oci_url(base)
    ns = setup_signing(tmp_path, keys, url)
    publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    host = base.removeprefix("http://")
    manifest = skopeo("inspect", "--raw", f"docker://{host}/team/classifier:v1")
    digest = "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
    # the registry has no referrers API (distribution 2.8): the fallback index tag lists the signature
    index = json.loads(skopeo("inspect", "--raw", f"docker://{host}/team/classifier:{digest.replace(':', '-')}"))
    [entry] = index["manifests"]
    assert entry["artifactType"] == "application/vnd.cas.signature.v1"
    referrer = json.loads(skopeo("inspect", "--raw", f"docker://{host}/team/classifier@{entry['digest']}"))
    assert referrer["subject"]["digest"] == digest
    key = referrer["layers"][0]["annotations"]["dev.cas.key"]
    assert key.startswith("trust/roles/team-a/")
    # the referrer's document is the signed role document the repository holds under that key
    stored = asyncio.run(_get(url, key))
    assert referrer["layers"][0]["digest"] == "sha256:" + hashlib.sha256(stored).hexdigest()


async def _get(url: str, key: str) -> bytes:
    backend = open_backend(url)
    try:
        return await backend.get(key)
    finally:
        await backend.close()


def test_blob_reads_redirected_to_the_registrys_object_store_are_followed(tmp_path, tuned, s3_server):
    """A registry storing in S3 answers blob reads with a redirect to a signed URL of the store, as large
    registries do: the pull follows it (and its Range), whole and delta."""
    bucket = f"registry-{os.urandom(4).hex()}"
    make_bucket(s3_server, bucket)
    proc, base = own_registry(tmp_path / "reg", s3=(s3_server, bucket, S3_CREDENTIALS))
    try:
        url = oci_url(base)
        src = Cache(tmp_path / "src")
        src.add(tuned["base"], "m:v1")
        src.add(tuned["tuned"], "m:v2")
        src.push("m:v1", url)
        src.push("m:v2", url)
        manifest = json.loads(skopeo("inspect", "--raw", f"docker://{base.removeprefix('http://')}/team/m:v1"))
        blob = manifest["layers"][-1]["digest"]
        with pytest.raises(urllib.error.HTTPError) as answer:  # urllib follows none: the registry's own answer
            urllib.request.build_opener(_NoRedirect).open(f"{base}/v2/team/m/blobs/{blob}", timeout=30)
        assert answer.value.code == 307 and answer.value.headers["Location"].startswith(s3_server)
        host = Cache(tmp_path / "host")
        host.pull("m:v1", url)
        delta = host.pull("m:v2", url)
        assert delta.bytes_fetched < 0.2 * delta.info.size
        assert tree_files(host.materialize("m:v2")) == tree_files(tuned["tuned"])
    finally:
        stop(proc)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_a_registry_that_refuses_deletes_says_how_to_allow_them_and_keeps_the_version(tmp_path, synthetic):
    proc, base = own_registry(tmp_path / "reg", delete=False)
    try:
        url = oci_url(base)
        cas_cli("add", str(synthetic), "m:v1", home=tmp_path / "src")
        cas_cli("push", "m:v1", "--remote", url, home=tmp_path / "src")
        out = cas_cli("rm", "m:v1", "--remote", url, home=tmp_path / "src", check=False)
        assert "storage.delete.enabled" in one_line_error(out)
        cas_cli("pull", "m:v1", "--remote", url, home=tmp_path / "host")
        assert tree_files(Cache(tmp_path / "host").materialize("m:v1")) == tree_files(synthetic)
    finally:
        stop(proc)
