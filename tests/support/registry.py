"""The CNCF distribution registry (Debian's ``docker-registry``) on 127.0.0.1, as the tests start it: open,
behind htpasswd Basic auth, or behind a token service (a small one here, signing JWTs as the registry
expects: an x5c chain to the root the registry trusts, the service as audience, the granted actions).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .procs import free_port, start

USER, PASSWORD = "cas-tester", "registry-secret-7c1"
SERVICE, ISSUER = "cas-test-registry", "cas-test-token-service"


def registry_binary() -> str | None:
    return shutil.which("docker-registry") or shutil.which("registry")


def start_registry(work: Path, auth: str = "none", s3: tuple[str, str, dict[str, str]] | None = None,
                   delete: bool = True):  # fmt: skip
    """A registry storing under ``work``, or in an S3 bucket (``s3``: endpoint, bucket, credentials; blob reads
    are then redirected to the object store, as large registries do); ``auth``: none, basic (htpasswd) or
    token.  Returns (proc, base URL, token server or None)."""
    port = free_port()
    lines = ["version: 0.1", "log:", "  level: warn", "storage:", *_storage(work, s3), "  delete:",
             f"    enabled: {str(delete).lower()}", "http:", f"  addr: 127.0.0.1:{port}"]  # fmt: skip
    tokens = None
    if auth == "basic":
        import bcrypt

        (work / "htpasswd").write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(5)).decode()}\n")
        lines += ["auth:", "  htpasswd:", "    realm: cas-test", f"    path: {work / 'htpasswd'}"]
    elif auth == "token":
        tokens = TokenService(work)
        lines += ["auth:", "  token:", f"    realm: {tokens.url}/token", f"    service: {SERVICE}",
                  f"    issuer: {ISSUER}", f"    rootcertbundle: {tokens.cert_path}"]  # fmt: skip
    (work / "config.yml").write_text("\n".join(lines) + "\n")
    # a CA bundle the environment names for AWS (a proxy's) makes the registry's S3 driver refuse plain http
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"} if s3 else None
    proc = start([registry_binary() or "docker-registry", "serve", str(work / "config.yml")],
                 f"http://127.0.0.1:{port}/v2/", env)  # fmt: skip
    return proc, f"http://127.0.0.1:{port}", tokens


def _storage(work: Path, s3: tuple[str, str, dict[str, str]] | None) -> list[str]:
    if s3 is None:
        return ["  filesystem:", f"    rootdirectory: {work / 'data'}"]
    endpoint, bucket, creds = s3
    return ["  s3:", f"    accesskey: {creds['AWS_ACCESS_KEY_ID']}", f"    secretkey: {creds['AWS_SECRET_ACCESS_KEY']}",
            f"    region: {creds['AWS_REGION']}", f"    regionendpoint: {endpoint}", f"    bucket: {bucket}",
            "    secure: false", "    v4auth: true", "  redirect:", "    disable: false"]  # fmt: skip


class TokenService:
    """A registry token service: Basic credentials (or none) in, a signed JWT granting what was asked out.
    Anonymous callers get pull only; ``requests`` counts the tokens issued."""

    def __init__(self, work: Path):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))  # fmt: skip
        self.cert_path = work / "token-root.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def issue(self, scopes: list[str], user: str | None) -> str:
        import jwt
        from cryptography.hazmat.primitives import serialization

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = [a for a in actions.split(",") if user or a == "pull"]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
        claims = {"iss": ISSUER, "sub": user or "", "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": uuid.uuid4().hex, "access": access}  # fmt: skip
        x5c = [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"x5c": x5c})

    def _handler(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # the http.server API's name
                from urllib.parse import parse_qs, urlparse

                query = parse_qs(urlparse(self.path).query)
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    name, _, secret = base64.b64decode(header[6:]).decode().partition(":")
                    if (name, secret) != (USER, PASSWORD):
                        self.send_response(401)
                        self.end_headers()
                        return
                    user = name
                service.requests += 1
                body = json.dumps({"token": service.issue(query.get("scope", []), user)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler
