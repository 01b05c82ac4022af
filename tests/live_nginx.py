"""Debian's nginx in a child process, running the example site of deploy/nginx.conf with
this test run's ports, certificate and static folder in place of the example's."""

from __future__ import annotations

import datetime
import os
import pwd
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.conf import settings

NGINX = Path("/usr/sbin/nginx")
EXAMPLE = Path(settings.BASE_DIR) / "deploy" / "nginx.conf"
HOST = "localhost"
START_TIMEOUT = 10.0  # seconds
STOP_TIMEOUT = 10.0

# Debian's /etc/nginx/nginx.conf, cut to what a test needs, with every path in `folder`:
# the example site is included in its `http {}` block, as sites-enabled/ is there.
MAIN_CONFIG = """\
{user}
worker_processes 1;
pid {folder}/nginx.pid;
events {{
    worker_connections 256;
}}
http {{
    sendfile on;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {folder}/access.log;
    gzip on;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/chat.conf;
}}
"""


def require_nginx() -> None:
    """Skip without Debian's nginx; fail in CI, which installs it."""
    if not NGINX.exists():
        message = f"{NGINX} is missing: apt-get install nginx (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def app_environment(origin: str, redis_url: str) -> dict[str, str]:
    """What deploy/nginx.conf asks of the app behind it, for the site at `origin`."""
    return {
        "REDIS_URL": redis_url,
        "DJANGO_ALLOWED_HOSTS": HOST,
        "DJANGO_CSRF_TRUSTED_ORIGINS": origin,
        "CHAT_WEBSOCKET_ORIGINS": origin,
        "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
        "CHAT_CLIENT_IP_HEADER": "X-Forwarded-For",
    }


@dataclass
class LiveProxy:
    process: subprocess.Popen[bytes]
    https_port: int
    http_port: int
    error_log: Path

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.https_port}"

    @property
    def plain_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"


@contextmanager
def serve(
    folder: Path,
    *,
    upstream_ports: Sequence[int],
    static_root: Path,
    https_port: int,
    http_port: int,
) -> Iterator[LiveProxy]:
    """nginx in the foreground (`daemon off`), its files in `folder`, in front of the
    daphne processes listening on `upstream_ports`; stopped on the way out."""
    write_config(
        folder,
        upstream_ports=upstream_ports,
        static_root=static_root,
        https_port=https_port,
        http_port=http_port,
    )
    error_log = folder / "error.log"
    process = subprocess.Popen(  # noqa: S603 - Debian's nginx, our own arguments
        [
            str(NGINX),
            *("-p", str(folder), "-c", str(folder / "nginx.conf")),
            *("-e", str(error_log), "-g", "daemon off;"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(process, https_port, error_log)
        yield LiveProxy(process, https_port, http_port, error_log)
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_config(
    folder: Path,
    *,
    upstream_ports: Sequence[int],
    static_root: Path,
    https_port: int,
    http_port: int,
) -> None:
    """The example site with this run's values, and a main config that includes it."""
    certificate, key = write_certificate(folder)
    site = EXAMPLE.read_text()
    example_ports = ["127.0.0.1:8001", "127.0.0.1:8002"]
    if len(upstream_ports) != len(example_ports):
        raise ValueError(f"the example names {len(example_ports)} processes")
    for example, port in zip(example_ports, upstream_ports, strict=True):
        site = replace(site, f"server {example} ", f"server 127.0.0.1:{port} ")
    site = replace(site, "listen 80;", f"listen 127.0.0.1:{http_port};")
    site = replace(site, "listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    live = "/etc/letsencrypt/live/chat.example.com"
    site = replace(site, f"{live}/fullchain.pem;", f"{certificate};")
    site = replace(site, f"{live}/privkey.pem;", f"{key};")
    site = replace(site, "server_name chat.example.com;", f"server_name {HOST};")
    site = replace(site, "alias /srv/chat/staticfiles/;", f"alias {static_root}/;")
    (folder / "chat.conf").write_text(site)
    # As root, nginx's workers would run as `nobody`, who cannot read a private temp folder.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    (folder / "nginx.conf").write_text(MAIN_CONFIG.format(user=user, folder=folder))


def replace(text: str, example: str, value: str) -> str:
    """`text` with every `example` replaced; the example must hold it, so that a change
    there fails here instead of testing something else."""
    if example not in text:
        raise AssertionError(f"{EXAMPLE} no longer has {example!r}")
    return text.replace(example, value)


def write_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `HOST`, valid for a day, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = folder / "certificate.pem", folder / "key.pem"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate_path, key_path


def wait_for_port(process: subprocess.Popen[bytes], port: int, error_log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    log = error_log.read_text() if error_log.exists() else "(no error log)"
    raise RuntimeError(f"nginx did not start (exit code {process.poll()}):\n{log}")
