"""Who a registry client is: credentials as docker finds them, and the challenge a registry's 401 sends.

Credentials come from ``CAS_REGISTRY_USERNAME`` / ``CAS_REGISTRY_PASSWORD``,
else from ``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json``): its
``auths``, or the credential helper it names (``credsStore``,
``credHelpers``), run as docker runs it.  A config or helper that cannot be
read gives no credentials: the registry then decides what anonymous may do.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path
from typing import NamedTuple

MAX_CONFIG_BYTES = 4 << 20
HELPER_TIMEOUT = 30  # seconds a credential helper may take


class Credentials(NamedTuple):
    username: str
    password: str


def credentials_for(host: str) -> Credentials | None:
    """The credentials for ``host``: the environment's, else docker's config (``auths`` or its helpers)."""
    user, password = os.environ.get("CAS_REGISTRY_USERNAME"), os.environ.get("CAS_REGISTRY_PASSWORD")
    if user and password:
        return Credentials(user, password)
    config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        doc = json.loads(config.read_bytes()[:MAX_CONFIG_BYTES])
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    entry = (doc.get("auths") or {}).get(host) if isinstance(doc.get("auths"), dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
        user, _, password = base64.b64decode(entry["auth"] + "==").decode("utf-8", "replace").partition(":")
        return Credentials(user, password) if user else None
    helpers = doc.get("credHelpers")
    helper = (helpers.get(host) if isinstance(helpers, dict) else None) or doc.get("credsStore")
    return _from_helper(str(helper), host) if isinstance(helper, str) and helper else None


def _from_helper(helper: str, host: str) -> Credentials | None:
    """``docker-credential-<helper> get``, as docker asks it; a helper that fails gives no credentials."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", helper):
        return None
    try:
        out = subprocess.run([f"docker-credential-{helper}", "get"], input=host.encode(), capture_output=True,
                             timeout=HELPER_TIMEOUT, check=True).stdout  # fmt: skip
        got = json.loads(out[:MAX_CONFIG_BYTES])
        return Credentials(str(got["Username"]), str(got["Secret"]))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return None


def challenge(header: str) -> tuple[str, dict[str, str]]:
    """A ``WWW-Authenticate`` header's scheme and parameters (``Bearer realm="...",scope="a:b:pull,push"``)."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in re.findall(r'([A-Za-z_]+)="([^"]*)"', rest)}
