"""Writes the seed corpus (`python -m fuzz.seeds`): valid inputs of every shape each target
takes, and the reproducers of the findings fixed so far (`finding-N-*`). Deterministic, so
re-running it rewrites the same files; checked in under fuzz/corpus/."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from acpi.dsm_buffer import INTEL_BUS_HANDLE
from fuzz.guest import CONFIG, fresh
from fuzz.targets.qmp import control_for, run_sync
from pmemd.daemon import savefile
from pmemd.dsm.firmware_image import build_image
from pmemd.dsm.page import encode_request
from pmemd.ioreq import abi
from pmemd.qmp.early import version_info
from pmemd.qmp.protocol import Connection
from pmemd.qmp.registry import COMMANDS, run_command
from pmemd.xenstore.wire import Message, MsgType, encode_strings

CORPUS = Path(__file__).resolve().parent / "corpus"
REPO = Path(__file__).resolve().parent.parent
Seeds = Iterator[tuple[str, bytes]]

u32, u64 = (lambda v: struct.pack("<I", v)), (lambda v: struct.pack("<Q", v))


def dsm_calls() -> Iterator[tuple[str, int, int, int, bytes]]:
    d0 = CONFIG.nvdimms[0]
    spa = d0.address
    for handle in (0, 1, 2, 3, 0xFFFF, INTEL_BUS_HANDLE):
        for revision in (1, 2):
            yield "mask", handle, revision, 0, b""
    for slot in (1, 2, 3):
        yield "label-size", slot, 1, 4, b""
        yield "label-read", slot, 1, 5, u32(0) + u32(256)
        yield "label-write", slot, 1, 6, u32(256) + u32(16) + bytes(range(16))
        yield "smart", slot, 1, 1, b""
        yield "thresholds", slot, 1, 2, b""
        yield "set-thresholds", slot, 2, 17, bytes(8)
        yield "inject-smart", slot, 2, 18, bytes(16)
        yield "latch", slot, 1, 10, b"\1"
    yield "ars-cap", 0, 1, 1, u64(spa) + u64(2 << 20)
    yield "ars-start", 0, 1, 2, u64(spa) + u64(2 << 20) + struct.pack("<HBB", 1, 0, 0) + bytes(4)
    yield "ars-status", 0, 1, 3, b""
    yield "clear-cap", 0, 1, 4, u64(spa) + u64(4096)
    yield "translate", 0, 1, 5, u32(0) + bytes(4) + u64(spa + 8192)
    yield "inject", 0, 1, 7, u64(spa) + u64(4096) + b"\1" + bytes(7)
    yield "inject-clear", 0, 1, 8, u64(spa) + u64(4096)
    yield "inject-status", 0, 1, 9, b""
    yield "msft-health", 2, 1, 11, b""
    image = build_image(0x2_0000_0001, b"seed firmware")
    yield "fw-info", 1, 2, 12, b""
    yield "fw-start", 1, 2, 13, b""
    yield "fw-send", 1, 2, 14, u32(1) + u32(0) + u32(len(image)) + image
    yield "fw-finish", 1, 2, 15, bytes(4) + u32(1)
    yield "fw-query", 1, 2, 16, u32(1)
    yield "fwa-info", 1, 2, 29, b""
    yield "fwa-arm", 1, 2, 30, b"\1"
    yield "bus-fwa-info", INTEL_BUS_HANDLE, 1, 1, b""
    yield "bus-fwa-activate", INTEL_BUS_HANDLE, 1, 2, b"\1"


def dsm_seeds() -> Seeds:
    calls = list(dsm_calls())
    for name, handle, revision, function, data in calls:
        yield f"{name}-h{handle}-r{revision}", encode_request(handle, revision, function, data)[:64 + len(data)]
    inject = next(data for name, _, _, _, data in calls if name == "inject")
    yield "inject-then-status", encode_request(0, 1, 7, inject) + encode_request(0, 1, 9)[:32]
    yield "write-then-read", encode_request(1, 1, 6, u32(0) + u32(8) + b"labels!!") + encode_request(1, 1, 5, u32(0) + u32(8))[:32]
    yield "input-length-too-big", encode_request(1, 1, 5, b"", input_length=0xFFFF_FFFF)[:32]
    update = {name: (h, r, f, d) for name, h, r, f, d in calls if name in ("fw-start", "fw-send", "fw-finish", "fw-query")}
    yield "firmware-update", b"".join(encode_request(*update[n]) for n in ("fw-start", "fw-send", "fw-finish")) + \
        encode_request(*update["fw-query"])[:64]


def slot(type_: int, addr: int, data: int, *, size: int = 4, count: int = 1, read: bool = False,
         ptr: bool = False, state: int = abi.STATE_IOREQ_READY) -> bytes:
    bits = abi.make_bits(state, dir=abi.IOREQ_READ if read else abi.IOREQ_WRITE, data_is_ptr=ptr)
    return abi.SLOT_STRUCT.pack(addr, data, count, size, 0, 0, bits, type_)


def ioreq_seeds() -> Seeds:
    page, port = CONFIG.dsm.page, CONFIG.dsm.notify_port
    request = encode_request(1, 1, 4)
    writes = b"".join(slot(abi.IOREQ_TYPE_COPY, page + off, int.from_bytes(request[off:off + 8], "little"), size=8)
                      for off in (0, 8))
    notify = slot(abi.IOREQ_TYPE_PIO, port, page, size=4)
    head = slot(abi.IOREQ_TYPE_COPY, page, 0, size=8, read=True)
    yield "label-size-call", writes + notify + head
    yield "rep-mmio-write-from-ram", slot(abi.IOREQ_TYPE_COPY, page, 0x1000, size=8, count=4, ptr=True) + notify
    yield "rep-mmio-read-to-ram", slot(abi.IOREQ_TYPE_COPY, page, 0x2000, size=8, count=8, read=True, ptr=True)
    yield "notify-read", slot(abi.IOREQ_TYPE_PIO, port, 0, size=4, read=True)
    yield "invalidate", slot(abi.IOREQ_TYPE_INVALIDATE, 0, 0, size=8)
    yield "pci-config", slot(abi.IOREQ_TYPE_PCI_CONFIG, 0x8000_0000, 0, size=4, read=True)
    yield "not-ready", slot(abi.IOREQ_TYPE_PIO, port, page, state=abi.STATE_IORESP_READY)
    yield "finding-6-rep-notify-4096", slot(abi.IOREQ_TYPE_PIO, port, 0x1000, size=4, count=4096, ptr=True)


def qmp_line(execute: str, arguments: dict[str, object] | None = None, msg_id: int = 1) -> bytes:
    msg: dict[str, object] = {"execute": execute, "id": msg_id}
    if arguments is not None:
        msg["arguments"] = arguments
    return json.dumps(msg).encode() + b"\n"


NEGOTIATE = qmp_line("qmp_capabilities", msg_id=0)


def qmp_seeds() -> Seeds:
    spa = CONFIG.nvdimms[0].address
    examples: dict[str, dict[str, object]] = {
        "pmemd-query-poison": {"limit": 4},
        "pmemd-inject-poison": {"address": spa, "length": 4096, "notify": True},
        "pmemd-clear-poison": {"address": spa, "length": 4096},
        "pmemd-query-health": {"slot": 0},
        "pmemd-set-health": {"slot": 0, "health": ["critical"], "spares": 10, "life-used": 50,
                             "media-temperature": 45.5, "ctrl-temperature": -3.0, "fatal": True, "dirty-shutdown": 2},
        "pmemd-start-scrub": {"slot": 0},
        "pmemd-query-labels": {"slot": 0},
        "xen-save-devices-state": {"filename": "/var/lib/pmemd/state"},
        "xen-load-devices-state": {"filename": "/var/lib/pmemd/state"},
    }
    for name in sorted(COMMANDS):
        yield f"cmd-{name}", NEGOTIATE + qmp_line(name, examples.get(name))
    yield "save-stop-load", NEGOTIATE + b"".join(
        qmp_line(n, examples.get(n), i) for i, n in enumerate(["xen-save-devices-state", "stop", "xen-load-devices-state", "cont"]))
    yield "unnegotiated", qmp_line("query-status")
    yield "garbage-then-command", b"xyz\n{\"execute\": 1}\n[1, 2]\n" + NEGOTIATE + qmp_line("query-version")
    yield "finding-3-inf-temperature", NEGOTIATE + b'{"execute": "pmemd-set-health", "arguments": {"slot": 0, "media-temperature": 1e999}}\n'
    yield "finding-3-nul-filename", NEGOTIATE + b'{"execute": "xen-save-devices-state", "arguments": {"filename": "/tmp/a\\u0000b"}}\n'
    yield "finding-3-surrogate-filename", NEGOTIATE + b'{"execute": "xen-save-devices-state", "arguments": {"filename": "/tmp/\\ud800"}}\n'


def xs(kind: MsgType, *strings: str, req_id: int = 0, tx_id: int = 0, payload: bytes | None = None) -> bytes:
    return Message(kind, req_id, tx_id, encode_strings(*strings) if payload is None else payload).encode()


def xs_store_seeds() -> Seeds:
    home = "/local/domain/7"
    yield "write-read-ls", (xs(MsgType.WRITE, payload=f"{home}/a\0value".encode()) + xs(MsgType.READ, f"{home}/a")
                            + xs(MsgType.DIRECTORY, home) + xs(MsgType.DIRECTORY_PART, home, "0"))
    yield "perms", xs(MsgType.MKDIR, f"{home}/d") + xs(MsgType.SET_PERMS, f"{home}/d", "n0", "r7") + xs(MsgType.GET_PERMS, f"{home}/d")
    yield "watch-and-write", (xs(MsgType.WATCH, home, "tok", req_id=1) + xs(MsgType.WRITE, payload=f"{home}/w\0x".encode())
                              + xs(MsgType.UNWATCH, home, "tok", req_id=1))
    yield "transaction", (xs(MsgType.TRANSACTION_START, "") + xs(MsgType.WRITE, payload=f"{home}/t\0x".encode(), tx_id=1)
                          + xs(MsgType.TRANSACTION_END, "T", tx_id=1))
    yield "guest-restricted", (xs(MsgType.CONTROL, "sim-restrict", "7", req_id=1) + xs(MsgType.WRITE, payload=b"data/x\0y", req_id=1)
                               + xs(MsgType.READ, "data/x", req_id=1) + xs(MsgType.GET_DOMAIN_PATH, "7", req_id=1))
    yield "domains", (xs(MsgType.INTRODUCE, "9", "1", "2") + xs(MsgType.IS_DOMAIN_INTRODUCED, "9")
                      + xs(MsgType.SET_TARGET, "9", "7") + xs(MsgType.RELEASE, "9") + xs(MsgType.WATCH, "@releaseDomain", "r"))
    yield "rm", xs(MsgType.WRITE, payload=f"{home}/r/s\0x".encode()) + xs(MsgType.RM, f"{home}/r") + xs(MsgType.RESET_WATCHES, "")
    yield "finding-1-long-watch-token", (
        xs(MsgType.CONTROL, "sim-restrict", "7", req_id=1)
        + Message(MsgType.WATCH, 1, 0, b"pmemd\0" + b"t" * 4089 + b"\0").encode()
        + xs(MsgType.MKDIR, f"{home}/pmemd") + xs(MsgType.SET_PERMS, f"{home}/pmemd", "n0", "r7")
        + xs(MsgType.WRITE, payload=f"{home}/pmemd/probe\0x".encode()))
    yield "finding-2-set-perms-empty", xs(MsgType.SET_PERMS, payload=b"")


def xs_wire_seeds() -> Seeds:
    yield from xs_store_seeds()
    yield "watch-event", xs(MsgType.WATCH_EVENT, "/local/domain/7/x", "tok")
    yield "error", Message(MsgType.ERROR, 3, 0, b"EINVAL\0").encode()
    yield "perms-list", xs(MsgType.GET_PERMS, "n0", "r7", "w3", "b4")
    yield "split-header", xs(MsgType.READ, "/a")[:7]


def config_seeds() -> Seeds:
    for path in sorted((REPO / "configs").glob("*.toml")):
        yield f"configs-{path.stem}", path.read_bytes()
    base = b'domid = 7\n[[nvdimm]]\nbacking = "nv0.img"\nsize = "4M"\n'
    yield "minimal", base
    yield "host", base + b'[host]\nspa_base = 0x1000000000\ndata = [0x1000000000, 0x2000000000]\nreserved = [0x1000000000, 0x1000200000]\n'
    yield "qemu-transport", base + b'[dsm]\ntransport = "qemu"\ndoorbell = "/run/db.sock"\nram = "/run/ram"\n'
    yield "memdev-flags", base + b'flags = ["save-fail", "not-armed", "map-failed"]\n'
    yield "finding-4-family-list", base + b"family = []\n"
    yield "finding-4-family-table", base + b"family = {}\n"


def savefile_seeds() -> Seeds:
    guest = fresh()
    root, dimms = guest.handlers.root, list(guest.handlers.dimms.values())
    yield "fresh", savefile.capture(CONFIG, root, dimms)
    control = control_for(Connection(version_info()))
    spa = CONFIG.nvdimms[0].address
    control.root, control.dimms = root, dict(guest.handlers.dimms)
    run_sync(run_command(control, "pmemd-inject-poison", {"address": spa, "length": 8192}))
    run_sync(run_command(control, "pmemd-set-health", {"slot": 0, "spares": 3, "media-temperature": 70.0}))
    yield "poison-health", savefile.capture(CONFIG, root, dimms)
    run_sync(run_command(control, "pmemd-start-scrub", {"slot": 0}))
    yield "scrubbing", savefile.capture(CONFIG, root, dimms)
    records = [(savefile.REC_LAYOUT, savefile._layout(CONFIG)), (savefile.REC_MEDIA, root.media.to_bytes())]
    yield "version-1", savefile.build(1, records)


def security_seeds() -> Seeds:
    """The flows Linux drives, and refusals: (function, payload) records, 0xFF = power-on."""
    zero, p1, p2, master = bytes(32), b"\x11" * 32, b"\x22" * 32, b"\x44" * 32

    def call(function: int, payload: bytes = b"") -> bytes:
        return bytes([function - 17, len(payload)]) + payload

    power_on = b"\xff\x00"
    yield "setup-update-disable", call(20, zero + p1) + call(20, p1 + p2) + call(21, p2) + call(19)
    yield "power-on-unlock", call(20, zero + p1) + power_on + call(19) + call(22, p2) + call(22, p1) + call(19)
    yield "freeze", call(20, zero + p1) + call(23) + call(21, p1) + power_on + call(22, p1) + call(21, p1)
    yield "crypto-erase", call(24, zero) + call(20, zero + p1) + call(24, p1) + call(24, p1)
    yield "overwrite-query", call(26) + call(25, zero) + call(26) + call(26) + call(26)
    yield "master", call(27, zero + master) + call(28, zero) + call(28, master) + call(19)
    yield "attempt-limit", call(20, zero + p1) + power_on + b"".join(call(22, p2) for _ in range(6)) + call(22, p1)
    yield "bad-lengths", call(20, zero) + call(22, p1 + b"x") + call(19, b"x") + call(23, b"\0") + call(18) + call(29)


SEEDS = {"dsm": dsm_seeds, "ioreq": ioreq_seeds, "qmp": qmp_seeds, "xs_wire": xs_wire_seeds,
         "xs_store": xs_store_seeds, "config": config_seeds, "savefile": savefile_seeds,
         "security": security_seeds}


def main() -> None:
    for target, seeds in SEEDS.items():
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in seeds():
            (directory / name).write_bytes(data)


if __name__ == "__main__":
    main()
