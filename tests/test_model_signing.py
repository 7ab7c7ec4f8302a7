"""OpenSSF model signing (sigstore's model_signing, key-based): a model signed before ``cas add`` still verifies
after push, pull and materialize, and ``cas model-sign`` writes signatures model_signing verifies without cas.

Keyless (Sigstore OIDC) signing needs Fulcio, Rekor and an OIDC provider, which this machine cannot reach; it is
one ``--method`` away and not run here.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import model_signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cas import Cache, Untrusted
from cas.trust import modelsigning

from .conftest import REPO, cas_cli, tree_files

MODEL_SIGNING_CLI = Path(sys.executable).parent / "model_signing"


def write_key_pair(private: object, where: Path) -> tuple[Path, Path]:
    """A private key as PKCS#8 PEM and its public half as SubjectPublicKeyInfo PEM, as openssl writes them."""
    key, pub = where.with_suffix(".pem"), where.with_suffix(".pub")
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                                          serialization.NoEncryption()))  # fmt: skip
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return key, pub


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The publisher's EC P-256 key pair, and a stranger's."""
    d = tmp_path_factory.mktemp("keys")
    key, pub = write_key_pair(ec.generate_private_key(ec.SECP256R1()), d / "publisher")
    _, stranger = write_key_pair(ec.generate_private_key(ec.SECP256R1()), d / "stranger")
    return {"key": key, "pub": pub, "stranger": stranger}


def verify_with_model_signing(model: Path, signature: Path, public_key: Path) -> None:
    """model_signing's own verifier, as a consumer without cas runs it; raises when the files do not match."""
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(model, signature)


def signed_names(signature: Path) -> set[str]:
    """The file names a signature's manifest lists (the DSSE payload, an in-toto statement)."""
    envelope = json.loads(signature.read_text())["dsseEnvelope"]
    return {r["name"] for r in json.loads(base64.b64decode(envelope["payload"]))["predicate"]["resources"]}


def writable_copy(src: Path, dest: Path) -> Path:
    """A copy a user may edit (a snapshot's files and directories are read-only, and copies keep their modes)."""
    shutil.copytree(src, dest)
    for p in [dest, *dest.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    return dest


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("cas: error: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_model_signed_before_add_verifies_after_push_pull_and_materialize(tmp_path, minilm, keys, server, token):
    url, _ = server
    folder = shutil.copytree(minilm, tmp_path / "all-MiniLM-L6-v2")
    # Signed as `model_signing sign key` does: the signature lies in the folder and the manifest lists it as ignored.
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=["model.sig"])
    signing = model_signing.signing.Config().use_elliptic_key_signer(private_key=keys["key"])
    signing.set_hashing_config(hashing).sign(folder, folder / "model.sig")
    verify_with_model_signing(folder, folder / "model.sig", keys["pub"])

    cas_cli("add", str(folder), "minilm:v1", home=tmp_path / "publisher")
    cas_cli("push", "minilm:v1", "--remote", url, home=tmp_path / "publisher")
    cas_cli("pull", "minilm:v1", "--remote", url, home=tmp_path / "host")
    snapshot = Path(cas_cli("materialize", "minilm:v1", home=tmp_path / "host").stdout.strip())
    assert tree_files(snapshot) == tree_files(folder)  # the signature travelled with the model, byte for byte

    verify_with_model_signing(snapshot, snapshot / "model.sig", keys["pub"])  # the read-only snapshot of hardlinks
    sig = str(snapshot / "model.sig")
    out = cas_cli("model-verify", "minilm:v1", "--key", str(keys["pub"]), "--signature", sig, home=tmp_path / "host")
    assert out.stdout.startswith("minilm:v1 verifies against ")
    with pytest.raises(ValueError, match="Key mismatch"):
        verify_with_model_signing(snapshot, snapshot / "model.sig", keys["stranger"])

    tampered = writable_copy(snapshot, tmp_path / "tampered")
    flip_one_byte(tampered / "model.safetensors")
    with pytest.raises(ValueError, match=r"Signature mismatch.*Hash mismatch for .*model\.safetensors"):
        verify_with_model_signing(tampered, tampered / "model.sig", keys["pub"])


def test_cas_model_sign_writes_a_signature_model_signing_verifies_on_any_copy(tmp_path, minilm, keys):
    home = tmp_path / "home"
    cas_cli("add", str(minilm), "minilm:v1", home=home)  # no signature of its own
    signature = tmp_path / "signatures" / "minilm-v1.sig"
    signature.parent.mkdir()
    out = cas_cli("model-sign", "minilm:v1", "--key", str(keys["key"]), "--output", str(signature), home=home)
    assert out.stdout.startswith(f"signed minilm:v1 (key): {signature}")
    assert [p.name for p in signature.parent.iterdir()] == [signature.name]  # no temporary left beside it

    snapshot = Path(cas_cli("materialize", "minilm:v1", home=home).stdout.strip())
    verify_with_model_signing(snapshot, signature, keys["pub"])
    # Paths in the manifest are relative to the model directory: every file, none from outside, no .git* path.
    assert signed_names(signature) == set(tree_files(minilm)) - {".gitattributes"}

    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(snapshot), str(copy)], check=True)
    verify_with_model_signing(copy, signature, keys["pub"])
    # A consumer with only model_signing's command line, the signature dropped into the copy as it puts its own.
    copy.chmod(0o755)
    shutil.copy(signature, copy / "model.sig")
    proc = subprocess.run([str(MODEL_SIGNING_CLI), "verify", "key", str(copy), "--signature", str(copy / "model.sig"),
                           "--public_key", str(keys["pub"])], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and "Verification succeeded" in proc.stdout, proc.stdout + proc.stderr

    ok = cas_cli("model-verify", "minilm:v1", "--key", str(keys["pub"]), "--signature", str(signature), home=home)
    assert ok.stdout.startswith("minilm:v1 verifies against ")
    wrong = cas_cli("model-verify", "minilm:v1", "--key", str(keys["stranger"]), "--signature", str(signature),
                    home=home, check=False)  # fmt: skip
    assert_one_line_error(wrong, "minilm:v1 does not verify against")
    assert "Key mismatch" in wrong.stderr

    changed = writable_copy(minilm, tmp_path / "changed")
    flip_one_byte(changed / "vocab.txt")
    cas_cli("add", str(changed), "minilm:v2", home=home)
    refused = cas_cli("model-verify", "minilm:v2", "--key", str(keys["pub"]), "--signature", str(signature),
                      home=home, check=False)  # fmt: skip
    assert_one_line_error(refused, "minilm:v2 does not verify against")
    assert "files changed: vocab.txt" in refused.stderr


def test_model_sign_refuses_a_key_that_cannot_sign_in_one_line_and_writes_nothing(tmp_path, synthetic, keys):
    home = tmp_path / "home"
    cas_cli("add", str(synthetic), "m:v1", home=home)
    ed_key, _ = write_key_pair(ed25519.Ed25519PrivateKey.generate(), tmp_path / "ed25519")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for key in (garbage, ed_key, keys["pub"]):  # not PEM; not an elliptic-curve key; a public key
        proc = cas_cli("model-sign", "m:v1", "--key", str(key), "--output", str(out_dir / "m.sig"), home=home,
                       check=False)  # fmt: skip
        assert_one_line_error(proc, f"the key file {key} cannot sign")
        assert "elliptic-curve private key" in proc.stderr
        assert list(out_dir.iterdir()) == [], key
    no_key = cas_cli("model-sign", "m:v1", "--output", str(out_dir / "m.sig"), home=home, check=False)
    assert_one_line_error(no_key, "give --key")
    snapshot = Path(cas_cli("materialize", "m:v1", home=home).stdout.strip())
    inside = cas_cli("model-sign", "m:v1", "--key", str(keys["key"]), "--output", str(snapshot / "m.sig"), home=home,
                     check=False)  # fmt: skip
    assert_one_line_error(inside, "is inside the model's read-only snapshot")
    assert list(out_dir.iterdir()) == [] and sorted(tree_files(snapshot)) == sorted(tree_files(synthetic))


def test_the_python_functions_sign_and_verify_a_stored_model(tmp_path, synthetic, keys):
    cache = Cache(tmp_path / "cache")
    cache.add(synthetic, "m:v1")
    cache.add(synthetic / "model.safetensors", "m:v2")  # another model: one file
    signature = modelsigning.sign(cache, "m:v1", tmp_path / "m.sig", key=keys["key"])
    assert modelsigning.verify(cache, "m:v1", signature, key=keys["pub"]) == cache.materialize("m:v1")
    with pytest.raises(Untrusted, match="m:v2 does not verify against .*: files missing: config.json$"):
        modelsigning.verify(cache, "m:v2", signature, key=keys["pub"])


def test_without_model_signing_the_commands_say_how_to_install_it(tmp_path, synthetic, keys):
    cas_cli("add", str(synthetic), "m:v1", home=tmp_path / "home")
    hidden = "import sys; sys.modules['model_signing'] = None; from cas.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", hidden, "--home", str(tmp_path / "home"), "model-sign", "m:v1",
                           "--key", str(keys["key"]), "--output", str(tmp_path / "m.sig")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert_one_line_error(proc, modelsigning.NOT_INSTALLED)
    assert "pip install 'cas[model-signing]'" in proc.stderr
    assert not (tmp_path / "m.sig").exists()
