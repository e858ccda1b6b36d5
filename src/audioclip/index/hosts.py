"""Host names as ``audioclip serve`` compares them with a request's ``Host`` header, the names it accepts
(:func:`allowed_host_names`), and the listening socket (no heavy imports: the command line checks
``--allowed-host`` values with :func:`host_name`, and binds the socket with :func:`listen`, before anything is
loaded)."""

from __future__ import annotations

import ipaddress
import re
import socket

__all__ = ["allowed_host_names", "host_name", "listen", "request_host_name"]

_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?", re.ASCII)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


def host_name(text: str) -> str:
    """``text`` (a name or address, with or without a ``:port``) as the Host check compares it.

    Lower-case, the port dropped (the check ignores ports), an IPv4 address
    as written plainly and an IPv6 one in brackets, compressed
    (``[::1]``; ``::1`` and ``[::1]:8000`` are taken too). Raises
    ``ValueError`` for anything else: empty, spaces, slashes, a port that is
    not 1-65535, a bracket that does not hold an IPv6 address.
    """
    given = text
    text = text.strip().lower()
    if text.startswith("["):
        match = re.fullmatch(r"\[([0-9a-f:.]+)\](?::([0-9]+))?", text, re.ASCII)
        if not match:
            raise ValueError(f"not a host name or address: {given!r}")
        _check_port(match.group(2), given)
        return _ipv6(match.group(1), given)
    if text.count(":") >= 2:  # a bare IPv6 address (with a port it must be in brackets)
        return _ipv6(text, given)
    name, _, port = text.partition(":")
    if _:
        _check_port(port, given)
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a host name or address: {given!r}")
    try:
        return ipaddress.IPv4Address(name).compressed
    except ValueError:
        return name


def _check_port(port: str | None, given: str) -> None:
    if port is not None and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
        raise ValueError(f"not a port (1-65535) in {given!r}")


def _ipv6(text: str, given: str) -> str:
    try:
        return f"[{ipaddress.IPv6Address(text).compressed}]"
    except ValueError:
        raise ValueError(f"not an IPv6 address: {given!r}") from None


def request_host_name(header: str) -> str:
    """The name a ``Host`` header gives (port dropped, lower-case, IPv6 compressed); '' if it gives none."""
    try:
        return host_name(header)
    except ValueError:
        return ""


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to ``host`` (a name or address; the first address it resolves to) and ``port``, listening.

    Connections wait in the backlog until the server starts accepting, so the
    socket can be bound before the model loads: a bad address or a busy port
    is found at once. Raises ``socket.gaierror`` for a name that does not
    resolve, ``OSError`` for an address that cannot be bound (in use, not
    this machine's, a privileged port).
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart is not refused for TIME_WAIT
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def allowed_host_names(host: str, extra=()) -> frozenset[str]:
    """Names accepted in the ``Host`` header: loopback ones, ``host`` unless a wildcard, and ``extra``.

    Each is taken by :func:`host_name` (lower-case, any ``:port`` dropped, IPv6 in
    brackets); a value of ``extra`` that is no host name or address raises ``ValueError``; a ``host`` that is
    none (it is checked when bound) adds nothing.
    """
    names = set(_LOOPBACK_NAMES)
    for i, given in enumerate([host, *extra]):
        try:
            name = host_name(given)
        except ValueError:
            if i == 0:
                continue
            raise
        try:
            unspecified = ipaddress.ip_address(name.strip("[]")).is_unspecified
        except ValueError:
            unspecified = False
        if not unspecified:
            names.add(name)
    return frozenset(names)
