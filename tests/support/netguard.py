"""Tests never reach the network: connections and name look-ups outside loopback are refused.

Installed once per test process by ``tests/conftest.py``. A library that tries to download
something (a tokenizer file, embedding weights, a dataset) fails at once with
``NetworkBlocked`` naming the address, instead of hanging or silently succeeding on a machine
that happens to be online.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any


class NetworkBlocked(OSError):
    """Raised for a connection or look-up that would leave the loopback range."""


_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: Any) -> bool:
    """Whether ``host`` (a name, an IP literal, bytes or None) stays on this machine."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").split("%", 1)[0]
    if host.lower() in _LOCAL_NAMES or host == "":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_address(family: int, address: Any) -> None:
    if family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        if not is_loopback(address[0]):
            raise NetworkBlocked(f"tests may not connect to {address[0]!r}: loopback only")


def install_network_guard() -> None:
    """Patch socket connect and getaddrinfo for this process (idempotent)."""
    if getattr(socket.socket.connect, "_netguard", False):
        return
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        _check_address(self.family, address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check_address(self.family, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_loopback(host):
            raise NetworkBlocked(f"tests may not look up {host!r}: loopback only")
        return real_getaddrinfo(host, *args, **kwargs)

    connect._netguard = True  # type: ignore[attr-defined]
    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo
