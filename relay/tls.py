"""TLS client contexts: one builder for every connection relay opens (MQTT, HTTP)."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A context that verifies the server against ``ca_file`` (default: the system's CAs)
    and, with ``cert_file`` (and ``key_file``, if the key is not in it), presents a client
    certificate. Raises ``OSError`` / ``ssl.SSLError`` for a file that cannot be loaded."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx
