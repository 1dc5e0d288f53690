"""Whether a remote service can be reached at all, asked before a library that would retry
it for minutes (tensorflow-datasets' downloads, an MLflow tracking server) is given it.
Standard library only: imported by data sources and loggers, which must not import JAX."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
REACH_TIMEOUT = 5.0  # seconds to open a connection before calling the host unreachable


def unreachable(urls: list[str], timeout: float = REACH_TIMEOUT) -> str | None:
    """Why a host of ``urls`` cannot be reached (name lookup or connection), or None when each
    accepts a TCP connection. None too behind a proxy (``*_PROXY`` set): only the proxy can
    tell. Only ``http``/``https`` URLs are asked (a database URI's port is its driver's)."""
    if any(os.environ.get(v) or os.environ.get(v.lower()) for v in PROXY_VARIABLES):
        return None
    hosts: dict[tuple[str, int], None] = {}
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            hosts[(parts.hostname, port)] = None
    for host, port in hosts:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            return f"{host}:{port} cannot be reached ({err.strerror or err})"
    return None
