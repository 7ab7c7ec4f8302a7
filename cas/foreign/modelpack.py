"""Models as OCI artifacts other tools read and write: CNCF ModelPack, KitOps ModelKits, plain ``oras push``
(pure functions; the transfers are ``ociartifact``'s).

What cas writes (``cas push --format modelpack``) is a ModelPack artifact:
one raw layer per file (``org.cncf.model.filepath`` and
``org.opencontainers.image.title`` its path; weights, their configuration,
documentation and code told apart by media type, as the specification
lists them) and a model config naming each layer's digest.  So ``oras``,
``skopeo``, ``kit unpack`` and a Kubernetes image volume get the plain files,
and a registry stores each distinct file once.  Beside it, a manifest whose
``subject`` is the artifact, tagged ``sha256-<hex>.cas`` (the tag-by-digest
form for registries without the referrers API), holds the version's ref
record and cas tree: a cas client reads each file's chunks from it and
fetches only the chunks it lacks, as ranges of the raw layers.

What cas reads (``cas import-oci``) is any of those: raw layers placed at
their path annotation, tar layers (KitOps, ModelPack ``.tar`` media types)
unpacked with only regular files and folders inside the model.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from ..content.ref import ModelInfo
from ..content.tree import check_path
from ..errors import InvalidManifest
from ..repo.ocilayout import CREATED, EMPTY_TYPE, MAX_LAYERS, REF_TYPE, ROOT, blob_of, descriptor, load_manifest
from ..repo.registry import MANIFEST, Blob

MODELPACK = "application/vnd.cncf.model.manifest.v1+json"
CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
DOC = "application/vnd.cncf.model.doc.v1.raw"
CODE = "application/vnd.cncf.model.code.v1.raw"
FILEPATH = "org.cncf.model.filepath"
TITLE = "org.opencontainers.image.title"
TREE_TYPE = "application/vnd.cas.tree.v1+msgpack"
SIDE_TYPE = "application/vnd.cas.modelpack-tree.v1"
KNOWN = (MODELPACK, "application/vnd.cnai.model.manifest.v1+json", "application/vnd.kitops.modelkit.manifest.v1+json")
WEIGHT_SUFFIXES = frozenset(".safetensors .bin .pt .pth .ckpt .gguf .ggml .onnx .h5 .keras .pb .tflite .ot .npz .npy "
                            ".msgpack .mlmodel .engine .plan .xml .params .joblib .pkl .pickle".split())  # fmt: skip
_DOC = re.compile(r"(readme|license|licence|notice|copying|changelog)(\..*)?|.*\.(md|rst|pdf)", re.IGNORECASE)
_TAR = re.compile(r".*\.tar(\+(gzip|zstd))?")


def layer_type(path: str) -> str:
    """The ModelPack media type of a file: weights, their configuration, documentation or code."""
    name = PurePosixPath(path).name
    suffix = PurePosixPath(path).suffix.lower()
    if _DOC.fullmatch(name):
        return DOC
    if suffix == ".py":
        return CODE
    return WEIGHT if suffix in WEIGHT_SUFFIXES else WEIGHT_CONFIG


def config(info: ModelInfo, layers: list[Blob]) -> bytes:
    """The ModelPack model config: the name, version and time, the format, each layer's digest in order."""
    return _dump({"descriptor": {"name": info.name, "version": info.version, "createdAt": _when(info.created)},
                  "config": {}, "modelfs": {"type": "layers", "diffIds": [b.digest for b in layers]}})  # fmt: skip


def manifest(info: ModelInfo, config_blob: Blob, layers: list[tuple[str, Blob]]) -> bytes:
    """The ModelPack manifest: one raw layer per file, its path noted as ModelPack and oras read it."""
    entries = [descriptor(b, layer_type(p), {FILEPATH: p, TITLE: p}) for p, b in layers]
    return _dump({"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": MODELPACK,
                  "config": descriptor(config_blob, CONFIG), "layers": entries,
                  "annotations": {CREATED: _when(info.created), ROOT: info.root,
                                  "org.opencontainers.image.version": info.version}})  # fmt: skip


def side_manifest(subject: Blob, empty: Blob, ref: Blob, tree: Blob) -> bytes:
    """The manifest beside an artifact cas wrote: its ref record and tree, ``subject`` the artifact."""
    return _dump({"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": SIDE_TYPE,
                  "config": descriptor(empty, EMPTY_TYPE), "subject": descriptor(subject, MANIFEST),
                  "layers": [descriptor(ref, REF_TYPE), descriptor(tree, TREE_TYPE)]})  # fmt: skip


def side_tag(digest: str) -> str:
    """The tag of the manifest beside the artifact of ``digest`` (``sha256-<hex>.cas``)."""
    return digest.replace(":", "-") + ".cas"


class Layer(NamedTuple):
    path: str  # where a raw layer's file goes; for a tar layer, informative only
    blob: Blob
    tar: str  # "" for a raw file, else "tar", "tar+gzip" or "tar+zstd"


class Artifact(NamedTuple):
    layers: list[Layer]
    created: str  # RFC 3339, or ""


class Side(NamedTuple):
    ref: Blob
    tree: Blob


def read_artifact(body: bytes, where: str) -> Artifact:
    """The files of a ModelPack, KitOps or oras artifact, every path checked; anything else refused."""
    doc = load_manifest(body, where)
    kind = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType", "")
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers or len(layers) > MAX_LAYERS:
        raise InvalidManifest(f"{where} has no layers to import")
    found = [_layer(entry, where) for entry in layers]
    if kind not in KNOWN and any(layer.tar for layer in found):
        raise InvalidManifest(f"{where} is a {_shown(kind)} artifact, not a model: cas imports ModelPack, KitOps "
                              "ModelKits and files pushed with oras")  # fmt: skip
    paths = [layer.path for layer in found if not layer.tar]
    if len(set(paths)) != len(paths):
        raise InvalidManifest(f"{where} names one file path in two layers; refused")
    created = _text(_map(doc.get("annotations")).get(CREATED))
    return Artifact(found, created)


def read_side(body: bytes, where: str, subject: str) -> Side:
    """The ref record and tree blobs of the manifest beside an artifact, checked to name that artifact."""
    doc = load_manifest(body, where)
    sub = doc.get("subject")
    if doc.get("artifactType") != SIDE_TYPE or not isinstance(sub, dict) or sub.get("digest") != subject:
        raise InvalidManifest(f"{where} is not the cas tree of {subject}")
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) != 2:
        raise InvalidManifest(f"{where} does not hold a ref record and a tree")
    return Side(_any_blob(layers[0], where), _any_blob(layers[1], where))


def _layer(entry: object, where: str) -> Layer:
    blob = _any_blob(entry, where)
    assert isinstance(entry, dict)
    notes = _map(entry.get("annotations"))
    path = notes.get(FILEPATH) or notes.get(TITLE)
    media = _text(entry.get("mediaType"))
    tar = _TAR.fullmatch(media)
    if tar:
        return Layer(str(path or ""), blob, media[media.rindex("tar") :])
    if not isinstance(path, str):
        raise InvalidManifest(f"{where} has a layer ({blob.digest[:19]}) with no file path annotation")
    try:
        return Layer(check_path(path.rstrip("/")), blob, "")
    except InvalidManifest as e:
        raise InvalidManifest(f"{where}: {e}") from None


def _any_blob(entry: object, where: str) -> Blob:
    return blob_of(entry, where, max_size=1 << 62)  # a model file may be as large as it is


def _shown(text: object) -> str:
    return repr(text)[:100].encode("unicode_escape").decode("ascii")


def _when(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _map(value: object) -> dict[str, Any]:
    """A JSON object of a document, or an empty one for anything else (annotations are optional)."""
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
