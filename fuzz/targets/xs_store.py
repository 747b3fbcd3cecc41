"""xenstore store: request messages on two connections → replies and watch events.

Input: a stream of xenstore messages (the wire framing); a message with an even `req_id`
goes to connection A, an odd one to connection B. Both start as dom0 on a store holding a
guest's home (`/local/domain/7`, guest-readable); `XS_CONTROL sim-restrict 7` turns a
connection into the guest.
Contract: `Session.handle` never raises (ALLOWED: only the reader's `RemoteProtocolError`,
which ends the stream as the socket shell does); it sends exactly one reply per request,
with the request's `req_id`, before the events the request caused.
"""

from __future__ import annotations

from fuzz.contract import Finding
from pmemd.xenstore.errors import RemoteProtocolError
from pmemd.xenstore.wire import Message, MessageReader, MsgType, NeedData, Perm
from pmemd.xenstored.store import Store

ALLOWED: tuple[type[BaseException], ...] = (RemoteProtocolError,)
MAX_MESSAGES = 64
GUEST = 7


def fresh_store() -> Store:
    store = Store()
    home = f"/local/domain/{GUEST}"
    store.mkdir(home)
    store.set_perms(home, [Perm.parse("n0"), Perm.parse(f"r{GUEST}")])
    store.introduce_domain(GUEST)
    return store


def run(data: bytes) -> None:
    store = fresh_store()
    outboxes: list[list[Message]] = [[], []]
    sessions = [store.connect(outboxes[i].append) for i in range(2)]
    reader = MessageReader()
    reader.receive_data(data)
    for _ in range(MAX_MESSAGES):
        msg = reader.next_message()
        if isinstance(msg, NeedData):
            return
        which = msg.req_id & 1
        outboxes[which].clear()
        sessions[which].handle(msg)
        replies = [m for m in outboxes[which] if m.type != MsgType.WATCH_EVENT]
        if len(replies) != 1 or replies[0].req_id != msg.req_id or outboxes[which][0] is not replies[0]:
            raise Finding(f"request {msg.type!r} got {[(m.type, m.req_id) for m in outboxes[which]]}")
