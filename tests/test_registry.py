"""The OCI distribution client (``cas.repo.registry``) against the CNCF distribution registry: open, behind
htpasswd Basic auth and behind a token service; skopeo reads what it wrote; a hostile registry is refused."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess

import pytest

from cas import RepoError
from cas.repo import registry as oci
from cas.repo.registry import Registry
from cas.repo.registryauth import Credentials, credentials_for

from .conftest import missing
from .support.registry import PASSWORD, USER


def _run(base: str, credentials: Credentials | None, work):
    async def go():
        client = Registry(base, credentials=credentials)
        try:
            return await work(client)
        finally:
            await client.close()

    return asyncio.run(go())


def _manifest(config, layers) -> bytes:
    def d(b):
        return {"mediaType": "application/octet-stream", "digest": b.digest, "size": b.size}

    return json.dumps({"schemaVersion": 2, "mediaType": oci.MANIFEST, "artifactType": "application/vnd.cas.test",
                       "config": {**d(config), "mediaType": "application/vnd.oci.empty.v1+json"},
                       "layers": [d(b) for b in layers]}).encode()  # fmt: skip


@pytest.mark.parametrize("auth", ["none", "basic", "token"])
def test_blobs_manifests_and_tags_round_trip(registry, auth, monkeypatch):
    base, tokens = registry(auth)
    creds = Credentials(USER, PASSWORD) if auth != "none" else None
    monkeypatch.setattr(oci, "PIECE", 1000)  # the large blob goes in PATCH pieces
    monkeypatch.setattr(oci, "TAGS_PAGE", 2)  # the tag listing comes in pages
    small, large = b"{}", bytes(range(256)) * 20

    async def work(r: Registry):
        config, blob = await r.put_blob("team/model", small), await r.put_blob("team/model", large)
        assert await r.get_blob("team/model", blob.digest, 1 << 20) == large
        assert await r.get_range("team/model", blob.digest, 1000, 1300) == large[1000:1300]
        assert await r.blob_size("team/other", blob.digest) is None
        assert await r.mount("team/other", blob.digest, "team/model")
        assert await r.blob_size("team/other", blob.digest) == len(large)
        body = _manifest(config, [blob])
        digest = await r.put_manifest("team/model", "v1", body)
        for tag in ("v2", "v3", "latest"):
            await r.put_manifest("team/model", tag, body)
        assert await r.get_manifest("team/model", "v1") == (body, digest)
        assert sorted(await r.tags("team/model")) == ["latest", "v1", "v2", "v3"]
        await r.delete_manifest("team/model", digest)
        assert await r.tags("team/model") == []
        await r.put_manifest("team/model", "v1", body)
        return body

    body = _run(base, creds, work)
    if tokens:
        assert tokens.requests >= 2  # a pull token, and a push token after the first upload's challenge
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        missing("skopeo (apt-get install skopeo; bash dev test does it as root)")
    auth_args = [f"--creds={USER}:{PASSWORD}"] if creds else []
    raw = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", *auth_args,
                          f"docker://{base.removeprefix('http://')}/team/model:v1"],
                         capture_output=True, check=True, timeout=60).stdout  # fmt: skip
    assert raw == body  # an independent client reads the manifest cas wrote, byte for byte


@pytest.mark.parametrize("auth", ["basic", "token"])
def test_wrong_or_missing_credentials_end_in_one_line(registry, auth):
    base, _ = registry(auth)
    for creds in (None, Credentials(USER, "wrong")):
        with pytest.raises(RepoError) as e:
            _run(base, creds, lambda r: r.put_blob("team/model", b"data"))
        message = str(e.value)
        assert "\n" not in message and "wrong" not in message  # one line, no secret printed
        assert "CAS_REGISTRY_USERNAME" in message


def test_credentials_come_from_the_environment_or_docker_config(tmp_path, monkeypatch, registry):
    base, _ = registry("basic")
    host = base.removeprefix("http://")
    monkeypatch.delenv("CAS_REGISTRY_USERNAME", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    assert credentials_for(host) is None
    (tmp_path / "docker").mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    creds = credentials_for(host)
    assert creds == Credentials(USER, PASSWORD)
    assert _run(base, creds, lambda r: r.put_blob("team/model", b"data")).size == 4
    monkeypatch.setenv("CAS_REGISTRY_USERNAME", "someone")
    monkeypatch.setenv("CAS_REGISTRY_PASSWORD", "else")
    assert credentials_for(host) == Credentials("someone", "else")


def test_a_hostile_registry_is_refused_in_one_line(registry, proxy):
    base, _ = registry("none")
    blob = _run(base, None, lambda r: r.put_blob("team/model", b"honest bytes"))
    garbage = proxy(base, "garbage")  # random bytes, 200, for every request
    cases = [(lambda r: r.get_blob("team/model", blob.digest, 1 << 20), "does not hash to its digest"),
             (lambda r: r.get_blob("team/model", blob.digest, 100), "more than the 100 allowed"),
             (lambda r: r.tags("team/model"), "is not JSON"),
             (lambda r: r.get_manifest("team/model", blob.digest), "does not hash to its digest")]  # fmt: skip
    for work, said in cases:
        with pytest.raises(RepoError, match=said):
            _run(garbage, None, work)
