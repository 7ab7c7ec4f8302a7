"""OpenSSF model signing of stored models: signatures that ``model_signing`` (sigstore's model-transparency) verifies.

Such a signature is a sigstore bundle over a manifest of every file of a
model directory and its SHA-256 (model_signing's defaults; ``.git*`` paths
are left out), each named by its path relative to that directory.  It
therefore verifies on any copy of the same files: the original folder, the
snapshot ``cas materialize`` prints, or a ``cp -r`` of it.  A signature made
before ``cas add`` travels with the model when it lies inside the folder and
the manifest lists it as ignored (what ``model_signing sign`` does); cas
stores it like any other file and changes no byte, so it still verifies
after push, pull and materialize.

``sign`` signs a stored model for consumers without cas, ``verify`` checks
one, both on its read-only snapshot; the signature is written outside it.
Methods: ``key`` (an elliptic-curve private key, PEM; tested), ``certificate``
(that key with its certificate chain) and ``sigstore`` (keyless: an OIDC
identity gets a short-lived certificate from Fulcio and the signature is
logged in Rekor).  Keyless signing needs those public servers and sigstore's
TUF root: a machine that cannot reach them gets an error saying so.  This is
not cas's own trust (``cas.trust``, which says which keys may publish which
names); ``model_signing`` is an optional extra, imported only here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CasError, InvalidInput, Untrusted
from ..system.names import temp_name

if TYPE_CHECKING:
    from ..local.cache import LocalCache

PathLike = str | os.PathLike[str]
METHODS = ("key", "certificate", "sigstore")
NOT_INSTALLED = "OpenSSF model signing needs the model-signing package: pip install 'cas[model-signing]'"
KEYLESS = ("the keyless flow needs Sigstore's public servers (its TUF root; to sign, also Fulcio, Rekor and an OIDC "
           "provider), which this machine may not reach; --method key needs no server")  # fmt: skip
EC_KEY = "an elliptic-curve private key in PEM (P-256, P-384 or P-521; openssl ecparam -genkey -name prime256v1)"


def sign(cache: LocalCache, tag: str, output: PathLike, *, method: str = "key", key: PathLike | None = None,
         password: str | None = None, certificate: PathLike | None = None, chain: Sequence[PathLike] = (),
         identity_token: str | None = None) -> Path:  # fmt: skip
    """Write an OpenSSF model-signing signature of ``tag``'s snapshot to ``output`` (outside the snapshot).

    ``method="key"`` signs with ``key``, an EC private key (PEM); ``"certificate"`` with ``key``, its
    ``certificate`` and ``chain``; ``"sigstore"`` (keyless, needs Sigstore's servers) with ``identity_token``,
    else ambient CI credentials, else a browser.  Nothing is left at ``output`` on failure.
    """
    ms = _model_signing(method)
    model = cache.materialize(tag)
    out = Path(output).absolute()
    if out.resolve().is_relative_to(model.resolve()):
        raise InvalidInput(f"{out} is inside the model's read-only snapshot; write the signature elsewhere")
    if not out.parent.is_dir():
        raise InvalidInput(f"{out.parent} is not a directory; give --output a path in an existing one")
    tmp = out.with_name(temp_name(f".{out.name}."))
    try:
        _signing_config(ms, method, key, password, certificate, chain, identity_token).sign(model, tmp)
        os.replace(tmp, out)
    except CasError:
        raise
    except Exception as e:  # model_signing's and sigstore's errors, said in one line
        raise InvalidInput(_failed(f"cannot sign {tag} with --method {method}", method, e)) from e
    finally:
        tmp.unlink(missing_ok=True)
    return out


def verify(cache: LocalCache, tag: str, signature: PathLike, *, method: str = "key", key: PathLike | None = None,
           chain: Sequence[PathLike] = (), identity: str | None = None, issuer: str | None = None) -> Path:  # fmt: skip
    """Check that ``tag``'s snapshot is exactly what ``signature`` signed (every file, none more, none fewer) by
    ``key`` (a public key), a certificate up to ``chain``, or a Sigstore ``identity`` from ``issuer``; returns the
    snapshot.  Raises ``Untrusted`` when it does not verify."""
    ms = _model_signing(method)
    model = cache.materialize(tag)
    config = _verifying_config(ms, method, key, chain, identity, issuer)
    if not Path(signature).is_file():
        raise InvalidInput(f"the signature {signature} is not a file")
    try:
        config.verify(model, Path(signature))
    except Exception as e:  # a mismatch, a forged or damaged bundle: not verified either way
        raise Untrusted(_failed(f"{tag} does not verify against {signature}", method, e)) from e
    return model


def _model_signing(method: str) -> Any:
    """The optional extra, imported on first use (about 1 s: sigstore and its dependencies)."""
    if method not in METHODS:
        raise InvalidInput(f"unknown signing method {method!r}: use one of {', '.join(METHODS)}")
    try:
        import model_signing
    except ImportError as e:
        raise InvalidInput(NOT_INSTALLED) from e
    return model_signing


def _signing_config(ms: Any, method: str, key: PathLike | None, password: str | None, certificate: PathLike | None,
                    chain: Sequence[PathLike], identity_token: str | None) -> Any:  # fmt: skip
    """model_signing's signing configuration; a key that cannot sign is refused here, before any hashing."""
    config = ms.signing.Config()
    if method == "sigstore":
        return config.use_sigstore_signer(use_ambient_credentials=True, identity_token=identity_token)
    private = _given(key, "--key", EC_KEY)
    try:
        if method == "key":
            return config.use_elliptic_key_signer(private_key=private, password=password)
        cert = _given(certificate, "--certificate", "the signing certificate (PEM)")
        return config.use_certificate_signer(private_key=private, signing_certificate=cert, certificate_chain=chain)
    except CasError:
        raise
    except Exception as e:  # cryptography's errors for a wrong key: one line
        what = f"the key file {key}" + (f" with the certificate {certificate}" if method == "certificate" else "")
        raise InvalidInput(f"{what} cannot sign ({_reason(e)}): give {EC_KEY}") from e


def _verifying_config(ms: Any, method: str, key: PathLike | None, chain: Sequence[PathLike],
                      identity: str | None, issuer: str | None) -> Any:  # fmt: skip
    """model_signing's verifying configuration; a public key that cannot verify is refused here."""
    config = ms.verifying.Config()
    try:
        if method == "key":
            return config.use_elliptic_key_verifier(public_key=_given(key, "--key", "the signer's EC public key (PEM)"))
        if method == "certificate":
            return config.use_certificate_verifier(certificate_chain=chain)
        who = _given(identity, "--identity", "the signer's identity (an email or a CI workflow URL)")
        return config.use_sigstore_verifier(identity=who, oidc_issuer=_given(issuer, "--issuer", "its OIDC issuer"))
    except CasError:
        raise
    except Exception as e:  # cryptography's or sigstore's errors: one line
        raise InvalidInput(_failed(f"cannot verify with --method {method}", method, e)) from e


def _given(value: Any, flag: str, what: str) -> Any:
    if not value:
        raise InvalidInput(f"give {flag}: {what}")
    return value


def _failed(what: str, method: str, e: BaseException) -> str:
    return f"{what}: {_reason(e)}" + (f"; {KEYLESS}" if method == "sigstore" else "")


def _reason(e: BaseException) -> str:
    """model_signing's message in one line, its file lists named plainly (a changed file's digests print as
    200 characters of bytes)."""
    if isinstance(e, (KeyError, json.JSONDecodeError)):
        return f"the signature is not a sigstore bundle ({type(e).__name__}: {e})"
    if isinstance(e, AttributeError):  # cryptography's key of another kind has no .curve
        return "the key is not an elliptic-curve key"
    text = str(e) or type(e).__name__
    extra = re.findall(r"Extra files found in model '[^']*': ([^\"']*)", text)
    missing = re.findall(r"Missing files in model '[^']*': ([^\"']*)", text)
    changed = re.findall(r"Hash mismatch for \\?'(.*?)\\?': Expected", text)
    lists = {"files not signed": extra, "files missing": missing, "files changed": changed}
    found = [f"{what}: {', '.join(names)}" for what, names in lists.items() if names]
    return "; ".join(found) if found else " ".join(text.split())
