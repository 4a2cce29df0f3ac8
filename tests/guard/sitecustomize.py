"""Test-only process guard, loaded at interpreter start with ``PYTHONPATH=tests/guard``.

Environment variables (all optional):

``GAZIMED_GUARD_LOG``
    A folder; each process appends JSON lines to ``<pid>.jsonl`` there: a
    ``start`` record (argv, ``LOCAL_RANK``), then one record per event below.
``GAZIMED_GUARD_NETWORK=1``
    Block every socket connection / name lookup that is not loopback or a Unix
    socket; each blocked attempt is recorded (``network``) and raises OSError.
``GAZIMED_GUARD_WRITES=1``
    Record every file opened for writing, created or renamed into place
    (``write``), with the ``LOCAL_RANK`` of the process at that moment.

Tests read the records back with :func:`read_records`. The pytest process itself
can use :func:`install_network_guard` / :func:`uninstall_network_guard`.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

_LOG_FD: int | None = None
_IN_HOOK = False
_ORIGINAL: dict[str, Any] = {}


def _record(event: str, **fields: Any) -> None:
    if _LOG_FD is None:
        return
    fields.update(event=event, pid=os.getpid(), local_rank=os.environ.get("LOCAL_RANK"))
    os.write(_LOG_FD, (json.dumps(fields, default=str) + "\n").encode())


def _open_log(folder: str) -> None:
    global _LOG_FD
    Path(folder).mkdir(parents=True, exist_ok=True)
    _LOG_FD = os.open(os.path.join(folder, f"{os.getpid()}.jsonl"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def read_records(folder: str | Path) -> list[dict[str, Any]]:
    """All records written under ``folder`` by guarded processes."""
    records = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line]
    return records


# ----------------------------------------------------------------- network
def _is_local_host(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host)
    if host in ("", "localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # any other name would need a lookup


def _is_local_address(sock: socket.socket, address: Any) -> bool:
    if getattr(socket, "AF_UNIX", None) is not None and sock.family == socket.AF_UNIX:
        return True
    if isinstance(address, (str, bytes)):
        return True
    return _is_local_host(address[0])


def _blocked(target: Any) -> OSError:
    _record("network", target=repr(target))
    return OSError(errno.ENETUNREACH, f"network access blocked by the test guard: {target!r}")


def install_network_guard() -> None:
    """Refuse non-loopback connections and lookups in this process."""
    if _ORIGINAL:
        return
    _ORIGINAL.update(
        connect=socket.socket.connect, connect_ex=socket.socket.connect_ex,
        sendto=socket.socket.sendto, getaddrinfo=socket.getaddrinfo,
        gethostbyname=socket.gethostbyname, gethostbyname_ex=socket.gethostbyname_ex,
    )

    def connect(self: socket.socket, address: Any) -> None:
        if not _is_local_address(self, address):
            raise _blocked(address)
        return _ORIGINAL["connect"](self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not _is_local_address(self, address):
            raise _blocked(address)
        return _ORIGINAL["connect_ex"](self, address)

    def sendto(self: socket.socket, data: bytes, *args: Any) -> int:
        address = args[-1]
        if not _is_local_address(self, address):
            raise _blocked(address)
        return _ORIGINAL["sendto"](self, data, *args)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local_host(host):
            raise _blocked(host)
        return _ORIGINAL["getaddrinfo"](host, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        if not _is_local_host(host):
            raise _blocked(host)
        return _ORIGINAL["gethostbyname"](host)

    def gethostbyname_ex(host: str) -> Any:
        if not _is_local_host(host):
            raise _blocked(host)
        return _ORIGINAL["gethostbyname_ex"](host)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname
    socket.gethostbyname_ex = gethostbyname_ex


def uninstall_network_guard() -> None:
    """Put the original socket functions back."""
    if not _ORIGINAL:
        return
    socket.socket.connect = _ORIGINAL["connect"]  # type: ignore[method-assign]
    socket.socket.connect_ex = _ORIGINAL["connect_ex"]  # type: ignore[method-assign]
    socket.socket.sendto = _ORIGINAL["sendto"]  # type: ignore[method-assign]
    socket.getaddrinfo = _ORIGINAL["getaddrinfo"]
    socket.gethostbyname = _ORIGINAL["gethostbyname"]
    socket.gethostbyname_ex = _ORIGINAL["gethostbyname_ex"]
    _ORIGINAL.clear()


# ------------------------------------------------------------------ writes
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event: str, args: tuple[Any, ...]) -> None:
    global _IN_HOOK
    if _IN_HOOK:
        return
    path = None
    if event == "open" and len(args) >= 3:
        name, mode, flags = args[0], args[1], args[2]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        path = name if writing else None
    elif event in ("os.rename", "os.replace") and len(args) >= 2:
        path = args[1]
    elif event == "os.mkdir" and args:
        path = args[0]
    if path is None or isinstance(path, int):
        return
    _IN_HOOK = True
    try:
        _record("write", path=os.path.abspath(os.fsdecode(path)))
    finally:
        _IN_HOOK = False


def _main() -> None:
    folder = os.environ.get("GAZIMED_GUARD_LOG")
    if not folder:
        return
    _open_log(folder)
    _record("start", argv=getattr(sys, "orig_argv", sys.argv))
    if os.environ.get("GAZIMED_GUARD_NETWORK") == "1":
        install_network_guard()
    if os.environ.get("GAZIMED_GUARD_WRITES") == "1":
        sys.addaudithook(_audit)


if __name__ == "sitecustomize":  # at interpreter start, not when a test imports it
    _main()
