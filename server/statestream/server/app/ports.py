"""The server's address, checked before anything starts: a taken port is one line, not grpc's bind traceback."""

from __future__ import annotations

import errno
import socket


class BindError(OSError):
    """The server cannot listen on its address (in use, not on this machine, not allowed)."""


def in_use_message(host: str, port: int) -> str:
    return (f"port {port} is already in use on {host} (another statestream-server?): stop that process, or choose "
            f"another port with --port (e.g. --port {port + 1}; --port 0 picks a free one)")


def check_bindable(host: str, port: int) -> None:
    """Bind HOST:PORT once the way the server will (SO_REUSEADDR), then let it go; BindError saying why not.

    Port 0 (any free port) always binds. A process that takes the port between this check and the server's own
    bind still gets a one-line BindError from App.start.
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BindError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    errors = []
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise BindError(in_use_message(host, port)) from None
                errors.append(e)
    if len(errors) == len(addresses):  # grpc listens if any address of the host binds (localhost without IPv6)
        e = errors[0]
        hint = " (ports below 1024 need root)" if e.errno == errno.EACCES else ""
        raise BindError(f"cannot listen on {host}:{port}: {e.strerror}{hint}; see --host and --port")
