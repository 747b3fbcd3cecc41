"""The embedded xenstored's state and request semantics, with no I/O.

:class:`Store` holds the node tree (Xen's permission model, generations for transaction conflict
detection, per-domain node counts for quotas) and the registered watches. :class:`Session` is one
connection's protocol state -- which domain it acts as, its watches and open transactions -- and
turns request :class:`~pmemd.xenstore.wire.Message` objects into replies and watch events passed to
a ``send`` callback. The trio socket shell in :mod:`pmemd.xenstored.server` only moves bytes.

Semantics follow C xenstored (tools/xenstored) where a choice was needed:

- dom0 is privileged; a node's owner (first perm entry) has full access; other domains get their
  own entry's access or else the owner entry's default. A domain that ``SET_TARGET`` names as the
  device model of another has owner rights on that domain's nodes.
- New nodes inherit the parent's perms; an unprivileged creator becomes the owner. Creating needs
  write access on the nearest existing ancestor. A missing node reads as EACCES, not ENOENT, when
  the nearest existing ancestor is not readable, so absence leaks nothing.
- Watches fire for the node and every descendant change; removing a subtree also fires watches
  registered exactly on each removed node; every watch fires once on registration. Unprivileged
  watchers only see events for nodes they may read.
- Transactions are optimistic: every node a transaction reads or writes is remembered with its
  generation; commit fails with EAGAIN if any of them changed meanwhile (creating or deleting a
  child changes the parent). Writes inside a transaction fire watches only on commit.
- Quotas (unprivileged domains): nodes owned per domain -> "EQUOTA" (oxenstored's name; C
  xenstored says ENOSPC), node value size -> "E2BIG", watches per connection -> "E2BIG" (as C),
  transactions per connection -> "ENOSPC" (as C).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Final, Protocol

import structlog

from pmemd.xenstore.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    XenstoreErrnoError,
    error_for,
)
from pmemd.xenstore.wire import (
    OK,
    XENSTORE_ABS_PATH_MAX,
    XENSTORE_PAYLOAD_MAX,
    XENSTORE_REL_PATH_MAX,
    Access,
    Message,
    MsgType,
    Perm,
    decode_strings,
    decode_write,
    domain_path,
    encode_error,
    encode_perms,
    encode_strings,
)

log = structlog.get_logger(__name__)

_PATH_CHARS: Final = re.compile(r"[A-Za-z0-9\-/_@]+")


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a valid node name (absolute or relative), or None if it is.

    Rules of C xenstored's ``is_valid_nodename``: characters ``[A-Za-z0-9-/_@]``, no empty
    segment (``//``), no trailing ``/`` except the root, length within the ABS/REL maxima.
    """
    if not path:
        return "empty path"
    limit = XENSTORE_ABS_PATH_MAX if path.startswith("/") else XENSTORE_REL_PATH_MAX
    if len(path) > limit:
        return f"path longer than {limit}"
    if not _PATH_CHARS.fullmatch(path):
        return "path has characters outside [A-Za-z0-9-/_@]"
    if "//" in path:
        return "path has an empty segment"
    if path != "/" and path.endswith("/"):
        return "path ends with /"
    return None

PRIVILEGED_DOMID: Final = 0
RELEASE_DOMAIN: Final = "@releaseDomain"
INTRODUCE_DOMAIN: Final = "@introduceDomain"
SPECIAL_WATCHES: Final = frozenset({RELEASE_DOMAIN, INTRODUCE_DOMAIN})


@dataclass(frozen=True)
class Quotas:
    """Limits for unprivileged domains (C xenstored defaults, except node size: our payload max)."""

    max_node_size: int = XENSTORE_PAYLOAD_MAX
    nodes_per_domain: int = 1000
    watches_per_connection: int = 128
    transactions_per_connection: int = 10


@dataclass(frozen=True)
class StoreStatistics:
    """A snapshot for tests and bench/: sizes, and how often each errno name was answered."""

    nodes: int
    connections: int
    watches: int
    open_transactions: int
    refusals: dict[str, int]


@dataclass(frozen=True)
class Node:
    """One xenstore node; ``gen`` changes on every committed modification."""

    value: bytes
    perms: tuple[Perm, ...]
    children: tuple[str, ...] = ()
    gen: int = 0


@dataclass(frozen=True)
class _Fire:
    """A change to report to watchers; ``exact`` only matches watches on ``path`` itself."""

    path: str
    perms: tuple[Perm, ...] | None
    exact: bool = False


def _parent(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def _join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def _is_under(path: str, ancestor: str) -> bool:
    """True when ``path`` is ``ancestor`` or inside it."""
    if ancestor == "/":
        return path.startswith("/")
    return path == ancestor or path.startswith(ancestor + "/")


class _Tree(Protocol):
    def get(self, path: str) -> Node | None: ...
    def put(self, path: str, node: Node) -> None: ...
    def delete(self, path: str) -> None: ...
    def owned(self, domid: int) -> int: ...


class _MainTree:
    """The committed tree: a flat path -> node map, with per-owner node counts."""

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}
        self._owned: Counter[int] = Counter()
        self._gens = itertools.count(1)

    def get(self, path: str) -> Node | None:
        return self._nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        old = self._nodes.get(path)
        if old is not None:
            self._owned[old.perms[0].domid] -= 1
        self._owned[node.perms[0].domid] += 1
        self._nodes[path] = replace(node, gen=next(self._gens))

    def delete(self, path: str) -> None:
        old = self._nodes.pop(path, None)
        if old is not None:
            self._owned[old.perms[0].domid] -= 1

    def owned(self, domid: int) -> int:
        return self._owned[domid]

    def __len__(self) -> int:
        return len(self._nodes)


class _TxnTree:
    """A transaction's view: private changes over the main tree, and every generation it saw."""

    def __init__(self, main: _MainTree, domid: int) -> None:
        self.main = main
        self.domid = domid
        self.overlay: dict[str, Node | None] = {}
        self.seen: dict[str, int | None] = {}
        self.fires: list[_Fire] = []
        self._owned_delta: Counter[int] = Counter()

    def get(self, path: str) -> Node | None:
        if path in self.overlay:
            return self.overlay[path]
        node = self.main.get(path)
        self.seen.setdefault(path, None if node is None else node.gen)
        return node

    def put(self, path: str, node: Node) -> None:
        old = self.get(path)
        if old is not None:
            self._owned_delta[old.perms[0].domid] -= 1
        self._owned_delta[node.perms[0].domid] += 1
        self.overlay[path] = node

    def delete(self, path: str) -> None:
        old = self.get(path)
        if old is not None:
            self._owned_delta[old.perms[0].domid] -= 1
        self.overlay[path] = None

    def owned(self, domid: int) -> int:
        return self.main.owned(domid) + self._owned_delta[domid]

    def conflicts(self) -> bool:
        """Whether anything this transaction read or wrote was changed by someone else."""
        for path, gen in self.seen.items():
            node = self.main.get(path)
            if (None if node is None else node.gen) != gen:
                return True
        return False

    def apply(self) -> None:
        for path, node in self.overlay.items():
            if node is None:
                self.main.delete(path)
            else:
                self.main.put(path, node)


class _Ops:
    """The tree operations, as one domain, against the main tree or a transaction's view."""

    def __init__(self, store: Store, tree: _Tree, domid: int, fires: list[_Fire]) -> None:
        self.store = store
        self.tree = tree
        self.domid = domid
        self.fires = fires

    # -- permissions ----------------------------------------------------------------------

    def _access(self, node: Node) -> tuple[bool, bool, bool]:
        """(read, write, owner) rights of this domain on ``node``."""
        owner = node.perms[0].domid
        if (
            self.domid == PRIVILEGED_DOMID
            or owner == self.domid
            or self.store.target_of(self.domid) == owner
        ):
            return True, True, True
        access = next((p.access for p in node.perms[1:] if p.domid == self.domid),
                      node.perms[0].access)
        return access.can_read, access.can_write, False

    def _nearest(self, path: str) -> tuple[str, Node]:
        """The nearest existing ancestor of a missing ``path`` (the root always exists)."""
        while True:
            path = _parent(path)
            node = self.tree.get(path)
            if node is not None:
                return path, node

    def _missing(self, path: str, *, write: bool) -> XenstoreErrnoError:
        """ENOENT, or EACCES if the caller could not even see that the node is missing."""
        _, ancestor = self._nearest(path)
        can_read, can_write, _ = self._access(ancestor)
        if not (can_write if write else can_read):
            return error_for("EACCES", path)
        return error_for("ENOENT", path)

    def _existing(self, path: str, *, write: bool = False, owner: bool = False) -> Node:
        node = self.tree.get(path)
        if node is None:
            raise self._missing(path, write=write)
        can_read, can_write, is_owner = self._access(node)
        if not (can_write if write else can_read) or (owner and not is_owner):
            raise error_for("EACCES", path)
        return node

    def _check_size(self, path: str, value: bytes) -> None:
        if len(value) > self.store.quotas.max_node_size:
            raise error_for("E2BIG", f"{path}: {len(value)} byte value")

    # -- operations -----------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        return self._existing(path).value

    def directory(self, path: str) -> tuple[str, ...]:
        return self._existing(path).children

    def directory_gen(self, path: str) -> tuple[int, tuple[str, ...]]:
        node = self._existing(path)
        return node.gen, node.children

    def get_perms(self, path: str) -> tuple[Perm, ...]:
        return self._existing(path).perms

    def write(self, path: str, value: bytes) -> None:
        self._check_size(path, value)
        node = self.tree.get(path)
        if node is None:
            self._create(path, value)
        else:
            self._existing(path, write=True)
            self.tree.put(path, replace(node, value=value))
        self.fires.append(_Fire(path, self.tree.get(path).perms))  # type: ignore[union-attr]

    def mkdir(self, path: str) -> None:
        if self.tree.get(path) is not None:
            self._existing(path, write=True)
            return
        self._create(path, b"")
        self.fires.append(_Fire(path, self.tree.get(path).perms))  # type: ignore[union-attr]

    def _create(self, path: str, value: bytes) -> None:
        """Create ``path`` and any missing ancestors, each inheriting its parent's perms."""
        anchor, anchor_node = self._nearest(path)
        if not self._access(anchor_node)[1]:
            raise error_for("EACCES", path)
        missing = path[len(anchor):].strip("/").split("/")
        unprivileged = self.domid != PRIVILEGED_DOMID
        if unprivileged and (
            self.tree.owned(self.domid) + len(missing) > self.store.quotas.nodes_per_domain
        ):
            raise error_for("EQUOTA", f"{path}: domain {self.domid} node quota")
        parent_path, parent = anchor, anchor_node
        for index, name in enumerate(missing):
            child_path = _join(parent_path, name)
            perms = parent.perms
            if unprivileged:
                perms = (Perm(self.domid, perms[0].access), *perms[1:])
            last = index == len(missing) - 1
            child = Node(value if last else b"", perms)
            self.tree.put(parent_path, replace(parent, children=(*parent.children, name)))
            self.tree.put(child_path, child)
            parent_path, parent = child_path, child

    def rm(self, path: str) -> None:
        if path == "/":
            raise error_for("EINVAL", "cannot remove the root")
        node = self.tree.get(path)
        if node is None:
            # C xenstored: removing a missing node is fine if its parent exists.
            if self.tree.get(_parent(path)) is not None:
                self._existing(_parent(path))
                return
            raise self._missing(path, write=True)
        self._existing(path, write=True)
        removed: list[tuple[str, Node]] = []
        stack = [(path, node)]
        while stack:
            current, current_node = stack.pop()
            removed.append((current, current_node))
            for name in current_node.children:
                child_path = _join(current, name)
                child = self.tree.get(child_path)
                if child is not None:
                    stack.append((child_path, child))
        for current, _ in removed:
            self.tree.delete(current)
        parent_path = _parent(path)
        parent = self.tree.get(parent_path)
        if parent is not None:
            name = path.rsplit("/", 1)[1]
            self.tree.put(parent_path, replace(
                parent, children=tuple(c for c in parent.children if c != name)))
        self.fires.append(_Fire(path, node.perms))
        self.fires.extend(_Fire(p, n.perms, exact=True) for p, n in removed[1:])

    def set_perms(self, path: str, perms: tuple[Perm, ...]) -> None:
        if not perms:
            raise error_for("EINVAL", "empty permission list")
        node = self._existing(path, write=True, owner=True)
        if self.domid != PRIVILEGED_DOMID and perms[0].domid != node.perms[0].domid:
            raise error_for("EPERM", f"{path}: unprivileged domains may not change the owner")
        self.tree.put(path, replace(node, perms=perms))
        self.fires.append(_Fire(path, perms))


@dataclass(eq=False)
class _Watch:
    path: str  # canonical, or a special "@..." name
    token: str
    relative_to: str | None  # domain home if registered with a relative path


class Store:
    """The xenstore tree, its watches and domains; usable directly by the simulator.

    Python API calls act as ``as_domid`` (dom0 by default), obey the same permissions as socket
    requests, fire the same watches and raise the same :mod:`pmemd.xenstore.errors` exceptions.
    Paths given to the Python API must be absolute.
    """

    def __init__(self, quotas: Quotas | None = None) -> None:
        self.quotas = quotas or Quotas()
        self._tree = _MainTree()
        self._tree.put("/", Node(b"", (Perm(PRIVILEGED_DOMID, Access.NONE),)))
        self._sessions: set[Session] = set()
        self._introduced: set[int] = {PRIVILEGED_DOMID}
        self._targets: dict[int, int] = {}
        self._tx_ids = itertools.count(1)
        self._refusals: Counter[str] = Counter()

    # -- Python API -----------------------------------------------------------------------

    def read(self, path: str, *, as_domid: int = PRIVILEGED_DOMID) -> bytes:
        return self._ops(as_domid).read(self._absolute(path))

    def write(self, path: str, value: bytes | str, *, as_domid: int = PRIVILEGED_DOMID) -> None:
        data = value.encode() if isinstance(value, str) else value
        self._run(as_domid, lambda ops: ops.write(self._absolute(path), data))

    def mkdir(self, path: str, *, as_domid: int = PRIVILEGED_DOMID) -> None:
        self._run(as_domid, lambda ops: ops.mkdir(self._absolute(path)))

    def rm(self, path: str, *, as_domid: int = PRIVILEGED_DOMID) -> None:
        self._run(as_domid, lambda ops: ops.rm(self._absolute(path)))

    def directory(self, path: str, *, as_domid: int = PRIVILEGED_DOMID) -> list[str]:
        return list(self._ops(as_domid).directory(self._absolute(path)))

    def get_perms(self, path: str, *, as_domid: int = PRIVILEGED_DOMID) -> list[Perm]:
        return list(self._ops(as_domid).get_perms(self._absolute(path)))

    def set_perms(
        self, path: str, perms: Iterable[Perm], *, as_domid: int = PRIVILEGED_DOMID
    ) -> None:
        entries = tuple(perms)
        self._run(as_domid, lambda ops: ops.set_perms(self._absolute(path), entries))

    def exists(self, path: str) -> bool:
        return self._tree.get(self._absolute(path)) is not None

    def introduce_domain(self, domid: int) -> None:
        """A domain appeared: mark it introduced and fire ``@introduceDomain`` watches."""
        if domid not in self._introduced:
            self._introduced.add(domid)
            self._deliver([_Fire(INTRODUCE_DOMAIN, None)])

    def release_domain(self, domid: int) -> None:
        """A domain was destroyed: forget it and fire ``@releaseDomain`` watches.

        As in Xen the event carries no domid; watchers re-list domains to learn which one died.
        """
        self._introduced.discard(domid)
        self._targets.pop(domid, None)
        self._deliver([_Fire(RELEASE_DOMAIN, None)])

    def is_domain_introduced(self, domid: int) -> bool:
        return domid in self._introduced

    def set_target(self, domid: int, target: int) -> None:
        """Let ``domid`` (a device-model domain) act with owner rights on ``target``'s nodes."""
        self._targets[domid] = target

    def target_of(self, domid: int) -> int | None:
        return self._targets.get(domid)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            nodes=len(self._tree),
            connections=len(self._sessions),
            watches=sum(len(s._watches) for s in self._sessions),
            open_transactions=sum(len(s._txns) for s in self._sessions),
            refusals=dict(self._refusals),
        )

    def connect(self, send: Callable[[Message], None], *, domid: int = PRIVILEGED_DOMID) -> Session:
        """A new connection acting as ``domid``; replies and events go to ``send``."""
        session = Session(self, send, domid)
        self._sessions.add(session)
        return session

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _absolute(path: str) -> str:
        problem = path_problem(path)
        if problem is not None or not path.startswith("/"):
            raise error_for("EINVAL", f"{path!r}: {problem or 'not absolute'}")
        return path

    def _ops(self, domid: int, tree: _Tree | None = None,
             fires: list[_Fire] | None = None) -> _Ops:
        return _Ops(self, tree or self._tree, domid, [] if fires is None else fires)

    def _run(self, domid: int, op: Callable[[_Ops], None]) -> None:
        ops = self._ops(domid)
        op(ops)
        self._deliver(ops.fires)

    def _begin(self, domid: int) -> tuple[int, _TxnTree]:
        return next(self._tx_ids), _TxnTree(self._tree, domid)

    def _commit(self, txn: _TxnTree) -> None:
        if txn.conflicts():
            raise error_for("EAGAIN", "transaction conflict")
        txn.apply()
        self._deliver(txn.fires)

    def _deliver(self, fires: list[_Fire]) -> None:
        for session in list(self._sessions):
            session._notify(fires)

    def _detach(self, session: Session) -> None:
        self._sessions.discard(session)


def _parse_domid(text: str) -> int:
    if not text.isdigit() or int(text) > 0xFFFF:
        raise error_for("EINVAL", f"bad domid {text!r}")
    return int(text)


_TREE_OPS: Final = frozenset({
    MsgType.DIRECTORY, MsgType.DIRECTORY_PART, MsgType.READ, MsgType.GET_PERMS, MsgType.WRITE,
    MsgType.MKDIR, MsgType.RM, MsgType.SET_PERMS,
})
_PRIVILEGED_OPS: Final = frozenset({
    MsgType.CONTROL, MsgType.INTRODUCE, MsgType.RELEASE, MsgType.IS_DOMAIN_INTRODUCED,
    MsgType.RESUME, MsgType.SET_TARGET,
})

# XS_CONTROL commands. "sim-restrict <domid>" is ours: it makes this connection act as a guest
# from now on, the job of the removed XS_RESTRICT (Debian's libxenstore keeps only a stub).
CONTROL_HELP: Final = "check\nprint <text>\nhelp\nsim-restrict <domid>\n"


class Session:
    """One client connection: acts as a domain, owns watches and transactions.

    :meth:`handle` consumes one request and calls ``send`` with the reply, then with any watch
    events the request caused (an initial watch fire follows the watch's OK, as in xenstored).
    """

    def __init__(self, store: Store, send: Callable[[Message], None], domid: int) -> None:
        self.store = store
        self.domid = domid
        self._send = send
        self._watches: list[_Watch] = []
        self._txns: dict[int, _TxnTree] = {}
        self._closed = False
        self._deferred: list[Message] | None = None  # events raised while answering a request
        self.log = log.bind(domid=domid)

    @property
    def home(self) -> str:
        return domain_path(self.domid)

    def close(self) -> None:
        """Forget watches and abort open transactions; the store stops calling ``send``."""
        self._closed = True
        self._watches.clear()
        self._txns.clear()
        self.store._detach(self)

    def handle(self, msg: Message) -> None:
        """Answer one request: a reply of the same type, or XS_ERROR with an errno name."""
        if self._closed:
            return
        after: list[_Fire] = []
        self._deferred = []
        try:
            try:
                payload = self._dispatch(msg, after)
            except XenstoreErrnoError as exc:
                self.log.debug("xenstore request refused", type=msg.type, error=str(exc))
                self.store._refusals[exc.errno_name] += 1
                reply = Message(MsgType.ERROR, msg.req_id, msg.tx_id,
                                encode_error(exc.errno_name))
            except RemoteProtocolError as exc:
                self.log.info("malformed xenstore request", type=msg.type, error=str(exc))
                self.store._refusals["EINVAL"] += 1
                reply = Message(MsgType.ERROR, msg.req_id, msg.tx_id, encode_error("EINVAL"))
            else:
                try:
                    reply = Message(msg.type, msg.req_id, msg.tx_id, payload)
                except LocalProtocolError:  # e.g. a huge permission list: too big to answer
                    self.store._refusals["E2BIG"] += 1
                    reply = Message(MsgType.ERROR, msg.req_id, msg.tx_id, encode_error("E2BIG"))
            self.store._deliver(after)
        finally:
            deferred, self._deferred = self._deferred, None
        self._send(reply)
        for event in deferred:
            self._send(event)

    # -- dispatch ---------------------------------------------------------------------------

    def _dispatch(self, msg: Message, after: list[_Fire]) -> bytes:
        kind = msg.type
        if not isinstance(kind, MsgType) or kind in (
            MsgType.WATCH_EVENT, MsgType.ERROR, MsgType.INVALID
        ):
            raise error_for("EINVAL", f"unknown or reply-only message type {int(kind)}")
        if kind in _PRIVILEGED_OPS and self.domid != PRIVILEGED_DOMID:
            raise error_for("EACCES", f"{kind.name} needs a privileged connection")
        if kind in _TREE_OPS or kind == MsgType.TRANSACTION_END:
            return self._tree_op(kind, msg, after)
        handler = getattr(self, f"_do_{kind.name.lower()}")
        return handler(msg.payload, after)

    def _tree_op(self, kind: MsgType, msg: Message, after: list[_Fire]) -> bytes:
        txn: _TxnTree | None = None
        if msg.tx_id:
            txn = self._txns.get(msg.tx_id)
            if txn is None:
                raise error_for("ENOENT", f"no transaction {msg.tx_id}")
        if kind == MsgType.TRANSACTION_END:
            if txn is None:
                raise error_for("EINVAL", "TRANSACTION_END without a transaction id")
            (verdict,) = decode_strings(msg.payload, 1)
            if verdict not in ("T", "F"):
                raise error_for("EINVAL", f"transaction end {verdict!r}")
            del self._txns[msg.tx_id]
            if verdict == "T":
                self.store._commit(txn)
            return OK
        fires = txn.fires if txn is not None else after
        ops = self.store._ops(self.domid, txn, fires)
        if kind == MsgType.WRITE:
            path, value = decode_write(msg.payload)
            ops.write(self._canon(path), value)
            return OK
        if kind == MsgType.SET_PERMS:
            path, *texts = decode_strings(msg.payload) or [""]
            if not texts:
                raise error_for("EINVAL", "SET_PERMS needs a path and at least one permission")
            ops.set_perms(self._canon(path), tuple(Perm.parse(t) for t in texts))
            return OK
        if kind == MsgType.DIRECTORY_PART:
            path, offset = decode_strings(msg.payload, 2)
            return self._directory_part(ops, self._canon(path), offset)
        (path,) = decode_strings(msg.payload, 1)
        canon = self._canon(path)
        if kind == MsgType.READ:
            return ops.read(canon)
        if kind == MsgType.DIRECTORY:
            children = encode_strings(*ops.directory(canon))
            if len(children) > XENSTORE_PAYLOAD_MAX:
                raise error_for("E2BIG", f"{canon}: use XS_DIRECTORY_PART")
            return children
        if kind == MsgType.GET_PERMS:
            return encode_perms(ops.get_perms(canon))
        if kind == MsgType.MKDIR:
            ops.mkdir(canon)
            return OK
        ops.rm(canon)
        return OK

    @staticmethod
    def _directory_part(ops: _Ops, path: str, offset_text: str) -> bytes:
        """C xenstored's chunking: ``gen\\0`` + whole names from byte ``offset`` of the child
        list, plus one extra NUL once the list is exhausted."""
        if not offset_text.isdigit():
            raise error_for("EINVAL", f"bad offset {offset_text!r}")
        gen, children = ops.directory_gen(path)
        blob = encode_strings(*children)
        head = encode_strings(str(gen))
        offset = int(offset_text)
        if offset >= len(blob):
            return head + b"\0"
        room = XENSTORE_PAYLOAD_MAX - len(head) - 1
        end = offset
        while end < len(blob):
            nxt = blob.index(b"\0", end) + 1
            if nxt - offset > room:
                break
            end = nxt
        chunk = blob[offset:end]
        return head + chunk + (b"\0" if end == len(blob) else b"")

    def _canon(self, path: str) -> str:
        """Absolute form of a node path; relative paths live under the domain's home."""
        problem = path_problem(path)
        if problem is not None:
            raise error_for("EINVAL", f"{path!r}: {problem}")
        if path.startswith("@"):
            raise error_for("EINVAL", f"{path!r}: special paths are for watches only")
        return path if path.startswith("/") else f"{self.home}/{path}"

    # -- non-tree requests -------------------------------------------------------------------

    def _do_watch(self, payload: bytes, after: list[_Fire]) -> bytes:
        path, token = decode_strings(payload, 2)
        watch = self._make_watch(path, token)
        if any(w.path == watch.path and w.token == token for w in self._watches):
            raise error_for("EEXIST", f"watch {path!r} {token!r}")
        if (self.domid != PRIVILEGED_DOMID
                and len(self._watches) >= self.store.quotas.watches_per_connection):
            raise error_for("E2BIG", "watch quota")
        self._watches.append(watch)
        # "We fire once up front: simplifies clients and restart." (C xenstored)
        self._queue_event(watch, watch.path)
        return OK

    def _do_unwatch(self, payload: bytes, after: list[_Fire]) -> bytes:
        path, token = decode_strings(payload, 2)
        target = self._make_watch(path, token)
        for watch in self._watches:
            if watch.path == target.path and watch.token == token:
                self._watches.remove(watch)
                return OK
        raise error_for("ENOENT", f"no watch {path!r} {token!r}")

    def _make_watch(self, path: str, token: str) -> _Watch:
        if path.startswith("@"):
            if path not in SPECIAL_WATCHES:
                raise error_for("EINVAL", f"unknown special watch {path!r}")
            return _Watch(path, token, None)
        canon = self._canon(path)
        return _Watch(canon, token, None if path.startswith("/") else self.home)

    def _do_reset_watches(self, payload: bytes, after: list[_Fire]) -> bytes:
        self._watches.clear()
        return OK

    def _do_transaction_start(self, payload: bytes, after: list[_Fire]) -> bytes:
        decode_strings(payload, 1)
        if (self.domid != PRIVILEGED_DOMID
                and len(self._txns) >= self.store.quotas.transactions_per_connection):
            raise error_for("ENOSPC", "transaction quota")
        tx_id, txn = self.store._begin(self.domid)
        self._txns[tx_id] = txn
        return encode_strings(str(tx_id))

    def _do_get_domain_path(self, payload: bytes, after: list[_Fire]) -> bytes:
        (domid,) = decode_strings(payload, 1)
        return encode_strings(domain_path(_parse_domid(domid)))

    def _do_introduce(self, payload: bytes, after: list[_Fire]) -> bytes:
        domid, mfn, port = decode_strings(payload, 3)
        if not (mfn.isdigit() and port.isdigit()):
            raise error_for("EINVAL", "introduce needs a numeric mfn and port")
        self.store.introduce_domain(_parse_domid(domid))
        return OK

    def _do_release(self, payload: bytes, after: list[_Fire]) -> bytes:
        domid = _parse_domid(decode_strings(payload, 1)[0])
        if not self.store.is_domain_introduced(domid):
            raise error_for("ENOENT", f"domain {domid} not introduced")
        self.store.release_domain(domid)
        return OK

    def _do_is_domain_introduced(self, payload: bytes, after: list[_Fire]) -> bytes:
        domid = _parse_domid(decode_strings(payload, 1)[0])
        return b"T\0" if self.store.is_domain_introduced(domid) else b"F\0"

    def _do_resume(self, payload: bytes, after: list[_Fire]) -> bytes:
        domid = _parse_domid(decode_strings(payload, 1)[0])
        if not self.store.is_domain_introduced(domid):
            raise error_for("ENOENT", f"domain {domid} not introduced")
        return OK

    def _do_set_target(self, payload: bytes, after: list[_Fire]) -> bytes:
        domid, target = (_parse_domid(t) for t in decode_strings(payload, 2))
        self.store.set_target(domid, target)
        return OK

    def _do_control(self, payload: bytes, after: list[_Fire]) -> bytes:
        command, *args = decode_strings(payload) or [""]
        if command == "check" or (command == "print" and len(args) == 1):
            return OK
        if command == "help":
            return encode_strings(CONTROL_HELP)
        if command == "sim-restrict" and len(args) == 1:
            self.domid = _parse_domid(args[0])
            self.log = log.bind(domid=self.domid)
            return OK
        raise error_for("EINVAL", f"unknown control command {command!r}")

    # -- watch delivery -----------------------------------------------------------------------

    def _notify(self, fires: list[_Fire]) -> None:
        if self._closed:
            return
        for fire in fires:
            for watch in self._watches:
                if fire.path.startswith("@") or fire.exact:
                    matches = watch.path == fire.path
                else:
                    matches = _is_under(fire.path, watch.path)
                if matches and self._may_see(fire):
                    self._queue_event(watch, fire.path)

    def _may_see(self, fire: _Fire) -> bool:
        if fire.perms is None or self.domid == PRIVILEGED_DOMID:
            return True
        ops = _Ops(self.store, self.store._tree, self.domid, [])
        return ops._access(Node(b"", fire.perms))[0]

    def _queue_event(self, watch: _Watch, path: str) -> None:
        if watch.relative_to is not None and path.startswith(watch.relative_to + "/"):
            path = path[len(watch.relative_to) + 1:]
        try:
            event = Message(MsgType.WATCH_EVENT, 0, 0, encode_strings(path, watch.token))
        except LocalProtocolError:
            # C xenstored: "Don't try to send over-long events." Dropped for this watcher only: a
            # guest's oversized token must not fail the request of whoever made the change.
            self.log.info("watch event too long to send, dropped", path=path, token_length=len(watch.token))
            return
        if self._deferred is not None:
            self._deferred.append(event)  # the reply to the current request goes first
        else:
            self._send(event)


__all__ = [
    "INTRODUCE_DOMAIN",
    "RELEASE_DOMAIN",
    "Node",
    "Quotas",
    "Session",
    "Store",
    "StoreStatistics",
]
