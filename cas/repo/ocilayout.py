"""Where the repository layout lives in an OCI registry, and the manifests that hold it (pure functions).

An ``oci://HOST[:PORT]/NAMESPACE`` repository keeps two kinds of registry
repository under ``NAMESPACE``:

    NAMESPACE/<name>:<version>      one manifest per version of a model: its config is the ref record, its
                                    layers the tree, the locator and every pack the version needs, so the
                                    registry's own garbage collection, replication and ``skopeo copy`` of
                                    a model repository keep everything a version needs
    NAMESPACE/cas/objects:<tag>     every other object of the layout, one manifest per key with the object
                                    as its single layer: packs (``pack-<id>``), their indexes
                                    (``index-<id>``), trees (``tree-<root>``), locators (``locator-<root>``),
                                    the listings (``names``, ``versions-<name>``), the prune marks
                                    (``marks``) and the trust documents (``trust-state``,
                                    ``trust-root-<n>``, ``trust-role-<role>-<n>``)

A model name can never name ``cas/objects`` (names hold no ``/``).  Every
manifest carries its key as the annotation ``dev.cas.key``, checked when
read: a registry that answers one tag with another key's manifest is
refused.  A key's manifest is unique to it (the key, and for documents a
nonce, are in it), so deleting one by digest never untags another.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, NamedTuple
from urllib.parse import urlparse

from ..errors import InvalidManifest, RepoError
from .format import MAX_PACK_BYTES, check_key
from .registry import MANIFEST, Blob

KEY = "dev.cas.key"
ROOT = "dev.cas.root"
NONCE = "dev.cas.nonce"
CREATED = "org.opencontainers.image.created"
POOL = "cas/objects"
EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
MODEL_TYPE = "application/vnd.cas.model.v1"
OBJECT_TYPE = "application/vnd.cas.object.v1"
REF_TYPE = "application/vnd.cas.ref.v1+msgpack"
MEDIA_TYPES = {
    "pack": "application/vnd.cas.pack.v1",
    "index": "application/vnd.cas.pack-index.v1+msgpack",
    "tree": "application/vnd.cas.tree.v1+msgpack",
    "locator": "application/vnd.cas.locator.v1+msgpack",
}
DOCUMENT_TYPE = "application/vnd.cas.document.v1+msgpack"
SIGNATURE_TYPE = "application/vnd.cas.signature.v1"
ROLE_TYPE = "application/vnd.cas.trust-role.v1+msgpack"
INDEX = "application/vnd.oci.image.index.v1+json"
MAX_LAYERS = 100_000
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# pool tag prefix -> the key's first parts; the rest of the tag is the key's last part(s)
_POOL_TAGS = {"pack-": "packs/", "tree-": "trees/", "locator-": "locators/", "versions-": "index/versions/",
              "trust-root-": "trust/root/"}  # fmt: skip
_SINGLE = {"names": "index/names", "marks": "prune/marks", "trust-state": "trust/state"}


class Where(NamedTuple):
    """A parsed ``oci://`` URL: the registry's base URL, its ``HOST[:PORT]`` and the namespace."""

    base: str
    host: str
    namespace: str
    url: str


class Place(NamedTuple):
    repository: str
    tag: str


def parse_url(url: str) -> Where:
    """``oci://HOST[:PORT]/NAMESPACE``: https, or plain http for localhost (or when ``oci+http://`` asks)."""
    parsed = urlparse(url)
    scheme = {"oci": None, "oci+http": "http", "oci+https": "https"}.get(parsed.scheme, "")
    if scheme == "" or not parsed.hostname or parsed.query or parsed.params:
        raise RepoError(f"{url!r} is not a registry URL; use oci://HOST[:PORT]/NAMESPACE")
    if "@" in parsed.netloc:
        raise RepoError("registry URLs carry no credentials: set CAS_REGISTRY_USERNAME and CAS_REGISTRY_PASSWORD, "
                        "or docker login")  # fmt: skip
    host, namespace = parsed.netloc, parsed.path.strip("/")
    for part in namespace.split("/") if namespace else []:
        if not _COMPONENT.fullmatch(part):
            raise RepoError(f"{url!r}: the namespace part {part!r} is not a registry repository name (lower-case "
                            "letters and digits, joined by '.', '_', '__' or '-')")  # fmt: skip
    scheme = scheme or ("http" if parsed.hostname in LOCAL_HOSTS else "https")
    public = f"{parsed.scheme}://{host}/{namespace}".rstrip("/")
    return Where(f"{scheme}://{host}", host, namespace, public)


def model_repository(namespace: str, name: str) -> str:
    """The registry repository of a model; a cas name the registry's grammar refuses is refused in one line."""
    if not _COMPONENT.fullmatch(name):
        raise RepoError(f"the model name {name!r} cannot be a registry repository name (the registry allows no two "
                        "of '.', '_', '-' in a row but '__' and '--'); push it under another name")  # fmt: skip
    return f"{namespace}/{name}" if namespace else name


def pool_repository(namespace: str) -> str:
    return f"{namespace}/{POOL}" if namespace else POOL


def place(namespace: str, key: str) -> Place:
    """The registry repository and tag holding ``key`` (a ref is its model's tag, the rest are in the pool)."""
    parts = check_key(key)
    kind = parts[0]
    if kind == "ref":
        return Place(model_repository(namespace, parts[1]), parts[2])
    if kind == "trust-role":
        return Place(pool_repository(namespace), f"trust-role-{parts[1]}-{parts[2]}")
    single = {v: k for k, v in _SINGLE.items()}.get(key)
    tag = single or f"{kind}-{parts[-1]}"
    return Place(pool_repository(namespace), tag)


def key_of_tag(tag: str) -> str | None:
    """The key a pool tag holds, or None for a tag that is not one of ours."""
    if tag in _SINGLE:
        return _SINGLE[tag]
    if tag.startswith("trust-role-"):
        role, _, version = tag[len("trust-role-") :].rpartition("-")
        key = f"trust/roles/{role}/{version}"
    elif tag.startswith("index-"):
        key = f"packs/{tag[len('index-') :]}.idx"
    else:
        prefix = next((p for p in _POOL_TAGS if tag.startswith(p)), None)
        if prefix is None:
            return None
        key = _POOL_TAGS[prefix] + tag[len(prefix) :]
    try:
        check_key(key)
    except InvalidManifest:
        return None
    return key


def media_type(key: str) -> str:
    return MEDIA_TYPES.get(check_key(key)[0], DOCUMENT_TYPE)


def descriptor(blob: Blob, media: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": media, "digest": blob.digest, "size": blob.size}
    if annotations:
        out["annotations"] = annotations
    return out


def object_manifest(key: str, empty: Blob, blob: Blob, nonce: str = "") -> bytes:
    """The manifest holding one object of the pool (a document's carries a nonce: each write is its own)."""
    notes = {KEY: key, **({NONCE: nonce} if nonce else {})}
    return _dump({"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": OBJECT_TYPE,
                  "config": descriptor(empty, EMPTY_TYPE), "annotations": notes,
                  "layers": [descriptor(blob, media_type(key), {KEY: key})]})  # fmt: skip


def version_manifest(key: str, config: Blob, root: str, created: float, layers: list[tuple[str, Blob]]) -> bytes:
    """A version's manifest: the ref record as config, what it needs as layers, its key, root and time noted."""
    when = datetime.fromtimestamp(created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return _dump({"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": MODEL_TYPE,
                  "config": descriptor(config, REF_TYPE),
                  "layers": [descriptor(b, media_type(k), {KEY: k}) for k, b in layers],
                  "annotations": {KEY: key, ROOT: root, CREATED: when}})  # fmt: skip


def signature_manifest(subject: Blob, empty: Blob, key: str, document: Blob) -> bytes:
    """A referrer of a version's manifest holding the signed trust document that covers it."""
    return _dump({"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": SIGNATURE_TYPE,
                  "config": descriptor(empty, EMPTY_TYPE), "subject": descriptor(subject, MANIFEST),
                  "layers": [descriptor(document, ROLE_TYPE, {KEY: key})], "annotations": {KEY: key}})  # fmt: skip


def referrers_tag(digest: str) -> str:
    """The tag of the referrers index for registries without the referrers API (OCI distribution 1.1)."""
    return digest.replace(":", "-")


def with_referrer(index: bytes | None, referrer: Blob, artifact_type: str, notes: dict[str, str]) -> bytes | None:
    """The fallback referrers index with ``referrer`` added, or None when it lists it already."""
    doc = json.loads(index) if index else {"schemaVersion": 2, "mediaType": INDEX, "manifests": []}
    listed = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(listed, list):
        raise InvalidManifest("the registry's referrers index is not an OCI index")
    if any(isinstance(m, dict) and m.get("digest") == referrer.digest for m in listed):
        return None
    entry = {**descriptor(referrer, MANIFEST, notes), "artifactType": artifact_type}
    return _dump({**doc, "manifests": [*listed, entry]})


class Manifest(NamedTuple):
    key: str
    config: Blob
    layers: dict[str, Blob]  # key -> blob
    root: str  # a version's root, "" for the pool's objects


def read_manifest(body: bytes, key: str) -> Manifest:
    """A manifest a registry answered for ``key``, checked: well formed, and naming that key."""
    where = f"the registry's manifest for {key}"
    doc = load_manifest(body, where)
    notes = doc.get("annotations")
    kind = doc.get("artifactType")
    if kind not in (MODEL_TYPE, OBJECT_TYPE) and (not isinstance(notes, dict) or KEY not in notes):
        raise InvalidManifest(f"{key} holds an artifact another tool wrote ({_shown(kind)}), not cas's: store a "
                              "ModelPack, KitOps or oras artifact with cas import-oci HOST/REPOSITORY:TAG")  # fmt: skip
    if not isinstance(notes, dict) or notes.get(KEY) != key:
        raise InvalidManifest(f"the registry answered {key} with a manifest of {_noted(notes)}; refused")
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise InvalidManifest(f"the registry's manifest for {key} has no list of layers")
    found = {}
    for layer in layers:
        blob = blob_of(layer, where)
        layer_key = layer.get("annotations", {}).get(KEY) if isinstance(layer.get("annotations"), dict) else None
        if isinstance(layer_key, str):
            check_key(layer_key)
            found[layer_key] = blob
    root = notes.get(ROOT)
    return Manifest(key, blob_of(doc.get("config"), where), found, root if isinstance(root, str) else "")


def load_manifest(body: bytes, where: str) -> dict[str, Any]:
    """A manifest's JSON object, refused unless it is an OCI image manifest (schema 2)."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise InvalidManifest(f"{where} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise InvalidManifest(f"{where} is not an OCI image manifest (an index or a schema 1 manifest?)")
    return doc


def blob_of(entry: object, where: str, max_size: int = MAX_PACK_BYTES) -> Blob:
    """A descriptor's digest and size, checked: a sha256 digest and a size from 0 to ``max_size``."""
    if not isinstance(entry, dict):
        raise InvalidManifest(f"{where} has a descriptor that is not an object")
    digest, size = entry.get("digest"), entry.get("size")
    if not (isinstance(digest, str) and _DIGEST.fullmatch(digest)) or type(size) is not int \
            or not 0 <= size <= max_size:  # fmt: skip
        raise InvalidManifest(f"{where} has a descriptor with a bad digest or size")
    return Blob(digest, size)


def _shown(value: object) -> str:
    return repr(value)[:100].encode("unicode_escape").decode("ascii")


def _noted(notes: object) -> str:
    named = notes.get(KEY) if isinstance(notes, dict) else None
    return repr(named)[:100].encode("unicode_escape").decode("ascii") if named is not None else "no key"


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
