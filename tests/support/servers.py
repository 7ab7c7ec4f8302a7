"""The repository servers the tests and benchmarks start on 127.0.0.1: nginx serving a repository folder
read-only, and an S3-compatible server (moto's standalone server) with buckets made on demand.

The nginx configuration here is the one docs/repositories.md shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .procs import free_port, start

NGINX_SERVER = """\
server {{
    listen 127.0.0.1:{port};
    root {repo};
    location / {{
        add_header Cache-Control "public, max-age=31536000, immutable";  # packs, trees: named by content
    }}
    location ~ ^/(refs|index|locators|prune|trust)/ {{
        add_header Cache-Control "no-cache";  # refs, listings, rewritten locators, prune marks, trust
    }}
    location ~ /\\. {{
        deny all;  # .tmp and other working files of a pushed folder
    }}
}}
"""

NGINX_MAIN = """\
worker_processes 2;
{user}
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    sendfile on;
    access_log {work}/access.log;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
{server}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def start_nginx(repo: Path, work: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """nginx serving the repository folder ``repo`` read-only on 127.0.0.1: (process, URL)."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed: apt-get install nginx (bash dev test does, as root)")
    port = port or free_port()
    work.mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""  # as root, workers would run as nobody, who cannot read tmp
    conf = work / "nginx.conf"
    server = NGINX_SERVER.format(port=port, repo=repo.absolute())
    conf.write_text(NGINX_MAIN.format(user=user, work=work, server=server))
    url = f"http://127.0.0.1:{port}"
    proc = start([binary, "-p", str(work), "-c", str(conf), "-g", "daemon off;"], url + "/index/names")
    return proc, url


def start_s3(work: Path, port: int | None = None, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """moto's S3-compatible server on 127.0.0.1: (process, endpoint URL)."""
    port = port or free_port()
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    endpoint = f"http://127.0.0.1:{port}"
    return start(cmd, endpoint + "/moto-api/", env), endpoint


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "cas-test-key", "AWS_SECRET_ACCESS_KEY": "cas-test-secret-0f9e8d",
                  "AWS_REGION": "us-east-1"}  # fmt: skip


def make_bucket(endpoint: str, name: str) -> None:
    """Create a bucket on the test server with a plain, unsigned request (moto takes it; no client needed)."""
    for _ in range(50):
        try:
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{name}", method="PUT"), timeout=10).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"could not create the bucket {name} at {endpoint}")
