"""Models as artifacts tools without cas read and write: ``cas push --format modelpack`` read back by skopeo
and the oras SDK, ``cas import-oci`` of what oras and a KitOps-style packer pushed, the delta import from
the cas tree beside an artifact counted at a proxy, and hostile artifacts refused in one line."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from cas import Cache
from cas.foreign import modelpack
from cas.repo.registry import MANIFEST, Registry

from .conftest import cas_cli, missing, require, stats, tree_files
from .test_cloud import one_line_error
from .test_oci import oci_url


def host_of(base: str) -> str:
    return base.removeprefix("http://")


def oras_client(base: str):
    oras = require("oras.client")
    return oras.OrasClient(hostname=host_of(base), insecure=True)


def test_a_modelpack_push_is_read_by_skopeo_and_oras_as_the_plain_files(tmp_path, minilm, registry):
    base, _ = registry()
    cas_cli("add", str(minilm), "minilm:v1", home=tmp_path / "src")
    out = cas_cli("push", "minilm:v1", "--remote", oci_url(base, "ml"), "--format", "modelpack", "--json",
                  home=tmp_path / "src")  # fmt: skip
    pushed = json.loads(out.stdout)
    assert pushed["reference"] == f"{host_of(base)}/ml/minilm:v1" and pushed["bytes_transferred"] > 80_000_000
    tool = shutil.which("skopeo")
    if tool is None:
        missing("skopeo (apt-get install skopeo; bash dev test does it as root)")
    layout = tmp_path / "layout"
    subprocess.run([tool, "copy", "--src-tls-verify=false", f"docker://{pushed['reference']}", f"oci:{layout}:v1"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]))
    assert manifest["artifactType"] == modelpack.MODELPACK
    assert json.loads(_blob(layout, manifest["config"]["digest"]))["modelfs"]["diffIds"] == [
        layer["digest"] for layer in manifest["layers"]]  # fmt: skip
    files = {layer["annotations"][modelpack.FILEPATH]: _blob(layout, layer["digest"]) for layer in manifest["layers"]}
    assert files == tree_files(minilm)  # every file, byte for byte, from the skopeo copy alone
    kinds = {layer["annotations"][modelpack.FILEPATH]: layer["mediaType"] for layer in manifest["layers"]}
    assert kinds["model.safetensors"] == modelpack.WEIGHT and kinds["config.json"] == modelpack.WEIGHT_CONFIG
    pulled = oras_client(base).pull(target=pushed["reference"], outdir=str(tmp_path / "oras"))
    assert pulled and tree_files(tmp_path / "oras") == tree_files(minilm)
    # cas's own pull says what the tag holds and how to store it
    out = cas_cli("pull", "minilm:v1", "--remote", oci_url(base, "ml"), home=tmp_path / "host", check=False)
    assert "cas import-oci" in one_line_error(out)


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def test_import_oci_stores_what_oras_pushed(tmp_path, synthetic, registry, monkeypatch):
    base, _ = registry()
    monkeypatch.chdir(synthetic)  # oras pushes paths relative to the working directory: they become the titles
    files = sorted(p.name for p in synthetic.iterdir())
    oras_client(base).push(target=f"{host_of(base)}/team/synth:v3", quiet=True,
                           files=[f"{name}:application/octet-stream" for name in files])  # fmt: skip
    info = _import(tmp_path / "c", f"oci://{host_of(base)}/team/synth:v3")
    assert info["tag"] == "synth:v3"
    assert tree_files(Cache(tmp_path / "c").materialize("synth:v3")) == tree_files(synthetic)


def _import(home: Path, reference: str, *extra: str) -> dict:
    return json.loads(cas_cli("import-oci", reference, *extra, "--json", home=home).stdout)


def test_import_oci_unpacks_tar_layers_as_a_kitops_modelkit_holds_them(tmp_path, registry):
    base, _ = registry()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in (("model/weights.bin", b"w" * 5000), ("model/config.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _push_artifact(base, "team/kit", "v1", [(archive.getvalue(), "application/vnd.kitops.modelkit.model.v1.tar",
                                              {"org.opencontainers.image.title": "model"})],
                   "application/vnd.kitops.modelkit.manifest.v1+json")  # fmt: skip
    _import(tmp_path / "c", f"{host_of(base)}/team/kit:v1")
    got = tree_files(Cache(tmp_path / "c").materialize("kit:v1"))
    assert got == {"model/weights.bin": b"w" * 5000, "model/config.json": b"{}"}


def test_a_delta_import_from_the_cas_tree_beside_an_artifact_fetches_about_the_change(tmp_path, tuned, registry,
                                                                                       proxy):  # fmt: skip
    base, _ = registry()
    src = Cache(tmp_path / "src")
    src.add(tuned["base"], "m:v1")
    src.add(tuned["tuned"], "m:v2")
    for tag in ("m:v1", "m:v2"):
        cas_cli("push", tag, "--remote", oci_url(base), "--format", "modelpack", home=tmp_path / "src")
    front = proxy(base)
    _import(tmp_path / "host", f"{host_of(front)}/team/m:v1")
    before = stats(front)["pack_bytes"]
    delta = _import(tmp_path / "host", f"{host_of(front)}/team/m:v2")
    moved = stats(front)["pack_bytes"] - before
    assert delta["bytes_reused"] > 0.8 * delta["size"]
    assert moved <= 1.2 * tuned["changed"]  # ranges of the changed file's layer, counted at the registry
    assert tree_files(Cache(tmp_path / "host").materialize("m:v2")) == tree_files(tuned["tuned"])


@pytest.mark.parametrize("path", ["../escape.bin", "/etc/evil", "a/../../b"])
def test_an_artifact_whose_file_path_leaves_the_model_is_refused_and_writes_nothing(tmp_path, registry, path):
    base, _ = registry()
    _push_artifact(base, "team/bad", "v1", [(b"payload", modelpack.WEIGHT, {modelpack.FILEPATH: path})],
                   modelpack.MODELPACK)  # fmt: skip
    out = cas_cli("import-oci", f"{host_of(base)}/team/bad:v1", home=tmp_path / "c", check=False)
    assert "path" in one_line_error(out)
    assert not (tmp_path / "escape.bin").exists() and Cache(tmp_path / "c").list() == []


def test_a_tar_layer_holding_a_link_is_refused(tmp_path, registry):
    base, _ = registry()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        link = tarfile.TarInfo("model/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    _push_artifact(base, "team/bad", "v1", [(archive.getvalue(), "application/vnd.cncf.model.weight.v1.tar", {})],
                   modelpack.MODELPACK)  # fmt: skip
    out = cas_cli("import-oci", f"{host_of(base)}/team/bad:v1", home=tmp_path / "c", check=False)
    assert "not a regular file" in one_line_error(out)
    assert Cache(tmp_path / "c").list() == []


def test_a_container_image_is_not_taken_for_a_model(tmp_path, registry):
    base, _ = registry()
    _push_artifact(base, "team/app", "v1", [(b"\x1f\x8b", "application/vnd.oci.image.layer.v1.tar+gzip", {})],
                   None, config_type="application/vnd.oci.image.config.v1+json")  # fmt: skip
    out = cas_cli("import-oci", f"{host_of(base)}/team/app:v1", home=tmp_path / "c", check=False)
    assert "not a model" in one_line_error(out)


def _push_artifact(base: str, repository: str, tag: str, layers: list[tuple[bytes, str, dict]],
                   artifact_type: str | None, config_type: str = modelpack.CONFIG) -> None:  # fmt: skip
    """An artifact as another tool pushes it: its layers as given, a config, a manifest under ``tag``."""
    import asyncio

    async def go():
        r = Registry(base)
        try:
            config = await r.put_blob(repository, b"{}")
            entries = []
            for data, media, notes in layers:
                blob = await r.put_blob(repository, data)
                entries.append({"mediaType": media, "digest": blob.digest, "size": blob.size, "annotations": notes})
            doc = {"schemaVersion": 2, "mediaType": MANIFEST, "layers": entries,
                   "config": {"mediaType": config_type, "digest": config.digest, "size": config.size}}  # fmt: skip
            if artifact_type:
                doc["artifactType"] = artifact_type
            await r.put_manifest(repository, tag, json.dumps(doc).encode())
        finally:
            await r.close()

    asyncio.run(go())
