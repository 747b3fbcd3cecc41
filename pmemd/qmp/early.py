"""The QMP socket bound at exec, greeting clients until the full server adopts it. Stdlib only.

A toolstack connects to the device model's QMP socket as soon as it appears and reads the
greeting before anything else (libxl's `qmp_open`; QEMU -S greets within a few ms of exec).
The daemon needs a few hundred ms of imports and setup before its QMP server runs, so
`pmemd run` binds `[qmp] socket` (0600) first thing (`bind_from_argv`) and greets whoever
connects meanwhile (`pump`, run at every import and by a trio task once trio runs). When
the daemon's "qmp" step starts `QmpServer` it `adopt`s the listener and the greeted
connections: those are in the negotiation phase, and whatever the client sent since
(`qmp_capabilities`, commands) waits in the socket for the server to read. So a client
that connects early sees the greeting at once and its answers when the daemon is ready.

If the daemon fails before adoption, `close` closes every connection (the client reads
end-of-file, as after any QMP server's exit) and removes the socket it bound. A guess that
turns out wrong (the config names another socket, or the QEMU transport serves no QMP)
is closed the same way before the real server binds (`EarlyQmp.matches`).

The greeting is pmemd's: `QEMU_DIALECT` and `PACKAGE` are defined here, and the full
server's `Connection` greets with the same bytes (tests/test_startup_path.py pins it).
"""

from __future__ import annotations

import _socket  # the C module: `socket` costs ~7 ms of enum and selectors set-up before the bind
import errno
import os
import stat
import sys

TYPE_CHECKING = False  # not `typing`'s: importing typing (or pathlib, json) costs ms before the greeting
if TYPE_CHECKING:
    from collections.abc import Sequence
    from socket import socket as Socket
    from typing import Any

    StrPath = str | os.PathLike[str]

QEMU_DIALECT = (8, 2, 0)
"""The QEMU release whose QMP this server answers like. libxl picks command variants by the
greeting's version (e.g. `xen-save-devices-state`'s `live` exists from 2.11), so we claim the
release whose commands we implement; `package` says who really answers."""
PACKAGE = "pmemd 0.1.0"
BACKLOG = 16


def version_info() -> dict[str, Any]:
    major, minor, micro = QEMU_DIALECT
    return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": PACKAGE}


def greeting_bytes() -> bytes:
    """The greeting frame exactly as `protocol.Connection.greeting_bytes` writes it (spelled
    out: `json` would import `re`, a few ms before the first client could be greeted)."""
    major, minor, micro = QEMU_DIALECT
    return (f'{{"QMP": {{"version": {{"qemu": {{"major": {major}, "minor": {minor}, "micro": {micro}}}, '
            f'"package": "{PACKAGE}"}}, "capabilities": []}}}}\r\n').encode()


class SocketInUse(OSError):
    """The QMP socket path cannot be used (a live daemon serves it, or it is not a socket)."""


def clear_stale(path: StrPath) -> None:
    """Remove a dead daemon's socket at `path`. Errors: `SocketInUse` for a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(errno.EEXIST, f"QMP socket path {path} exists and is not a socket")
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        probe.settimeout(1.0)  # a Unix connect answers at once: accepted (queued) or refused
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: a dead daemon's socket
        return
    finally:
        probe.close()
    raise SocketInUse(errno.EADDRINUSE, f"QMP socket {path} is served by another process")


def listen(path: StrPath, backlog: int = BACKLOG) -> tuple[_socket.socket, os.stat_result]:
    """A listening Unix socket at `path`, mode 0600 before anyone can connect (bound, chmod-ed,
    then listened on), replacing only a stale socket; and the socket file's identity."""
    path = os.fspath(path)
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise SocketInUse(errno.ENOENT, f"QMP socket directory {parent} does not exist (see [qmp] socket)")
    clear_stale(path)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        identity = os.stat(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock, identity


def unlink_if_ours(path: StrPath, identity: os.stat_result) -> None:
    """Remove the socket file at `path` if it is still the one we bound."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (identity.st_dev, identity.st_ino):
            os.unlink(path)
    except FileNotFoundError:
        pass


class EarlyQmp:
    """A bound QMP listener and the connections it greeted, until `adopt` or `close`."""

    def __init__(self, path: StrPath, sock: _socket.socket, identity: os.stat_result) -> None:
        self.path = os.fspath(path)
        self.sock = sock
        self.identity = identity
        self.greeted: list[_socket.socket] = []
        self._greeting = greeting_bytes()
        self._hook: _PumpOnImport | None = None
        self._serving: Any = None  # serve_until_adopted's trio.CancelScope
        sock.setblocking(False)

    @classmethod
    def bind(cls, path: StrPath) -> EarlyQmp | None:
        """Bind `path` now; None when it cannot be (the full server then reports why)."""
        try:
            sock, identity = listen(path)
        except OSError:
            return None
        early = cls(path, sock, identity)
        early._hook = _PumpOnImport(early)
        sys.meta_path.insert(0, early._hook)
        return early

    @property
    def open(self) -> bool:
        return self.sock is not None and self.sock.fileno() >= 0

    def pump(self) -> None:
        """Accept every waiting client and greet it; never blocks."""
        while self.open:
            try:
                fd, _ = self.sock._accept()  # type: ignore[attr-defined]  # accept4(SOCK_CLOEXEC); the new fd blocks
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE: leave it queued for the full server
                return
            conn = _socket.socket(fileno=fd)
            try:
                conn.send(self._greeting)  # a fresh socket's buffer takes the few bytes whole
            except OSError:
                conn.close()
                continue
            self.greeted.append(conn)

    def matches(self, path: StrPath) -> bool:
        return self.open and os.fspath(path) == self.path

    def fileno(self) -> int:
        return self.sock.fileno()

    def adopt(self) -> tuple[Socket, os.stat_result, list[Socket]]:
        """Hand the listener, its identity and the greeted connections to the full server
        (as `socket.socket`s, which trio takes)."""
        import socket

        self.pump()
        self._unhook()
        if self._serving is not None:  # frees the fd's trio wait at once (abort runs synchronously)
            self._serving.cancel()
        sock = socket.socket(fileno=self.sock.detach())
        greeted = [socket.socket(fileno=conn.detach()) for conn in self.greeted]
        self.greeted = []
        self.sock = None  # type: ignore[assignment]
        return sock, self.identity, greeted

    def close(self) -> None:
        """Close what was not adopted: clients read end-of-file, the socket file goes."""
        self._unhook()
        if self._serving is not None:
            self._serving.cancel()
        if not self.open:
            return
        for conn in self.greeted:
            conn.close()
        self.greeted = []
        self.sock.close()
        self.sock = None  # type: ignore[assignment]
        unlink_if_ours(self.path, self.identity)

    def _unhook(self) -> None:
        if self._hook is not None:
            try:
                sys.meta_path.remove(self._hook)
            except ValueError:
                pass
            self._hook = None

    async def serve_until_adopted(self) -> None:
        """Greet clients as they connect while trio runs, until adopted or closed (then return)."""
        import trio

        with trio.CancelScope() as self._serving:
            while self.open:
                await trio.lowlevel.wait_readable(self.sock)
                self.pump()


class _PumpOnImport:
    """A `sys.meta_path` entry that finds nothing and greets waiting clients: the daemon's
    start-up is mostly imports, so this keeps the greeting prompt without a thread."""

    def __init__(self, early: EarlyQmp) -> None:
        self.early = early

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        self.early.pump()
        return None


def qmp_path_from_argv(argv: Sequence[str]) -> str | None:
    """The QMP socket `pmemd run ARGS` will serve: `--qmp PATH` as given (as libxl gives
    QEMU `-qmp unix:PATH`), else read from its config; None when it cannot be told (not
    `run`, no readable config, the QEMU transport). Only a guess: the daemon checks it
    against the validated config before using the socket."""
    if not argv or argv[0] != "run":
        return None
    given = _option(argv, "--qmp")
    if given:
        return given
    config = _option(argv, "--config")
    domain = _option(argv, "--domain")
    if config is None:
        return None
    try:
        import tomllib

        with open(config, "rb") as f:
            raw = tomllib.load(f)
        if raw.get("dsm", {}).get("transport", "xen") != "xen":
            return None
        domid = int(domain) if domain is not None else raw["domid"]
        path = raw.get("qmp", {}).get("socket", f"/var/run/xen/qmp-pmemd-{domid}")
        return path if isinstance(path, str) and path else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _option(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


def bind_from_argv(argv: Sequence[str]) -> EarlyQmp | None:
    """`pmemd run`'s first act: bind and start greeting on the socket its config names."""
    path = qmp_path_from_argv(argv)
    return EarlyQmp.bind(path) if path is not None else None
