"""A scripted guest: performs `_DSM` calls exactly the way the generated AML does.

Each call replays NCAL's accesses from `acpi.dsm_buffer` — the same plan the SSDT builder
encodes and that acpiexec's trace is checked against — on a vCPU of the simulated guest:
the two header QWORD writes, the input QWORD chunks, the notify write, the reply-head
read, then the reply QWORD chunks. The UUID check and the input/reply bounds are decided
here, untrapped, as the AML decides them. Calls are serialized per guest with a lock file,
as the Serialized NCAL method serializes them inside one guest OS.

Script format (JSON Lines), one object per line:
  {"dimm": <slot or null for the root>, "function": F, "revision": 1, "arg3": "<hex>",
   "vcpu": 0, "uuid": "<optional override>"}          -> {"status", "out", "ioreqs"}
  {"read": <GPA>, "length": N, "vcpu": 0}              -> {"data": "<hex>"}
  {"write": <GPA>, "data": "<hex>", "vcpu": 0}         -> {"ok": true}
A malformed line or a faulting access yields {"error": "..."} and the script goes on.
A read that consumes poison yields {"error": "machine check: ...", "mce": {...}} instead.

  {"events": true, "poll": false}  -> {"gpes": [4], "notify": [{"target": "NV00", "value": 129}]}
takes the SCI: the pending GPEs (cleared) and, when the NVDIMM event GPE is among them (or
with "poll": true), NEVT's reads of the notify register (`acpi.events`), one per event.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any
from uuid import UUID

from acpi import dsm_buffer as page
from acpi.dsm_buffer import DsmRequestHeader
from acpi.events import EVENT_GPE, decode_event, event_bound
from acpi.layout import INTEL_BUS_UUID, INTEL_DIMM_UUID, ROOT_UUID, device_name
from pmemd.config import Config
from pmemd.ioreq.abi import IOREQ_WRITE
from pmemd.sim import wire
from pmemd.sim.client.sync import SyncClient
from pmemd.sim.client.vcpu import GuestConnection
from pmemd.xen.errors import DomainCrashed, HypervisorError, ProtocolError

QWORD_MASK = (1 << 64) - 1
MCE_VECTOR = 18  # #MC
ADDRESS_SPACE_END = 1 << 64
EHWPOISON = getattr(errno, "EHWPOISON", 133)  # what the simulator answers a read of poison with


class DaemonGone(Exception):
    """The device model stopped answering: the guest cannot make progress."""


@dataclass(frozen=True)
class DsmCall:
    handle: int
    revision: int
    function: int
    arg3: bytes
    vcpu: int
    uuid: UUID
    expected_uuid: UUID


@dataclass(frozen=True)
class CallResult:
    status: int | None
    out: bytes
    ioreqs: int

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "out": self.out.hex(), "ioreqs": self.ioreqs}


class MachineCheck(Exception):
    """A guest read consumed poison: the CPU would take #MC instead of loading data."""

    def __init__(self, message: str, mce: dict[str, int]) -> None:
        super().__init__(message)
        self.mce = mce


class ScriptError(ValueError):
    """A script line that is not a valid call or memory access."""


class Guest:
    """The scripted guest of one domain: one connection per vCPU, opened on first use."""

    def __init__(self, config: Config, socket_path: str, *, lock_path: str | None = None,
                 connect: Callable[[str, int, int], GuestConnection] = GuestConnection) -> None:
        """`connect(socket_path, domid, vcpu)` opens a vCPU (a test may record accesses instead)."""
        self.config = config
        self.socket_path = socket_path
        self.lock_path = lock_path or f"{socket_path}.dom{config.domid}.aml.lock"
        self._connect = connect
        self._vcpus: dict[int, GuestConnection] = {}
        self.slots = {d.slot for d in config.nvdimms}
        self._platform: SyncClient | None = None  # for gpe_take, opened on first use

    def vcpu(self, index: int) -> GuestConnection:
        if not 0 <= index < self.config.guest.vcpus:
            raise ScriptError(f"vcpu {index} does not exist (guest has {self.config.guest.vcpus})")
        if index not in self._vcpus:
            self._vcpus[index] = self._connect(self.socket_path, self.config.domid, index)
        return self._vcpus[index]

    def close(self) -> None:
        for conn in self._vcpus.values():
            conn.close()
        self._vcpus.clear()
        if self._platform is not None:
            self._platform.close()
            self._platform = None

    # -- the SCI: NVDIMM events, as NEVT drains them ---------------------------------------

    def events(self, *, poll: bool = False) -> dict[str, Any]:
        """Take the pending GPEs; for the NVDIMM GPE (or `poll`), read and decode the events."""
        if self._platform is None:
            self._platform = SyncClient(self.socket_path)
        gpes = self._platform.request("gpe_take", domid=self.config.domid)["gpes"]
        notifies: list[dict[str, Any]] = []
        if EVENT_GPE in gpes or poll:
            conn = self.vcpu(0)
            for _ in range(event_bound(len(self.slots))):
                event = decode_event(conn.port_read(self.config.dsm.notify_port, page.NOTIFY_WIDTH))
                if event is None:
                    break
                handle, value = event
                if handle == page.ROOT_HANDLE:
                    notifies.append({"target": "NVDR", "value": value})
                elif handle - 1 in self.slots:
                    notifies.append({"target": device_name(handle - 1), "value": value})
        return {"gpes": gpes, "notify": notifies}

    # -- one _DSM call, as NCAL performs it ---------------------------------------------

    def call(self, call: DsmCall) -> CallResult:
        """One `_DSM` call; raises DaemonGone when no device model answers the notify."""
        if call.uuid != call.expected_uuid:
            out = b"\x00" if call.function == 0 else page.STATUS_NOT_SUPPORTED.to_bytes(4, "little")
            return CallResult(_status(out), out, 0)
        if len(call.arg3) > page.MAX_INPUT:
            out = page.STATUS_INVALID_INPUT.to_bytes(4, "little")
            return CallResult(_status(out), out, 0)
        conn = self.vcpu(call.vcpu)
        with self._aml_lock():
            before = conn.trapped
            out = self._ncal(conn, call)
            return CallResult(_status(out), out, conn.trapped - before)

    def _ncal(self, conn: GuestConnection, call: DsmCall) -> bytes:
        base = self.config.dsm.page
        header = DsmRequestHeader.build(
            dict(handle=call.handle, revision=call.revision & 0xFFFFFFFF,
                 function=call.function & 0xFFFFFFFF, input_length=len(call.arg3))
        )
        request = header + call.arg3
        for access in page.request_accesses(len(call.arg3)):
            if access.space == "io":
                self._notify(conn, access.width, base & 0xFFFFFFFF)
                continue
            src = access.offset - page.HEADER_OFFSET
            chunk = request[src : src + access.width].ljust(access.width, b"\x00")
            self._store(conn, base + access.offset, chunk)
        reply = bytearray(page.PAGE_SIZE)
        for access in page.reply_accesses(self._read_reply_length(conn, base, reply)):
            if access.offset == page.REPLY_LENGTH_OFFSET:
                continue  # the head, already read
            reply[access.offset : access.offset + access.width] = self._load(conn, base + access.offset, access.width)
        reply_length = int.from_bytes(reply[0:4], "little")
        if not page.MIN_REPLY_LENGTH <= reply_length <= page.MAX_REPLY_LENGTH:
            return page.STATUS_HARDWARE_ERROR.to_bytes(4, "little")
        return bytes(reply[page.REPLY_PAYLOAD_OFFSET:reply_length])

    def _notify(self, conn: GuestConnection, width: int, value: int) -> None:
        """Ring the notify port; if no device model claims it, nobody will ever answer."""
        result = conn.access(wire.SPACE_PORT, self.config.dsm.notify_port, width, IOREQ_WRITE, value)
        if not result.trapped:
            raise DaemonGone(f"no device model serves notify port {self.config.dsm.notify_port:#x}")

    def _read_reply_length(self, conn: GuestConnection, base: int, reply: bytearray) -> int:
        reply[0 : page.QWORD] = self._load(conn, base + page.REPLY_LENGTH_OFFSET, page.QWORD)
        return int.from_bytes(reply[0:4], "little")

    def _store(self, conn: GuestConnection, gpa: int, data: bytes) -> None:
        """One AML store to the page: a trapped access in mmio mode, a RAM write in ram mode."""
        if self.config.dsm.mode == "ram":
            conn.write_memory(gpa, data)  # guest RAM: the vCPU writes it without trapping
        else:
            conn.mmio_write(gpa, len(data), int.from_bytes(data, "little"))

    def _load(self, conn: GuestConnection, gpa: int, width: int) -> bytes:
        if self.config.dsm.mode == "ram":
            return conn.read_memory(gpa, width)
        return conn.mmio_read(gpa, width).to_bytes(width, "little")

    @contextmanager
    def _aml_lock(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- script lines ------------------------------------------------------------------

    def parse_call(self, line: dict[str, Any]) -> DsmCall:
        dimm = line.get("dimm")
        if dimm is None:
            handle, expected = page.ROOT_HANDLE, ROOT_UUID
        elif isinstance(dimm, int) and not isinstance(dimm, bool) and 0 <= dimm <= 0xFF:
            handle, expected = dimm + 1, INTEL_DIMM_UUID
        else:
            raise ScriptError(f"dimm must be a slot number 0-255 or null, got {dimm!r}")
        function = _int_field(line, "function", None)
        revision = _int_field(line, "revision", 1)
        vcpu = _int_field(line, "vcpu", 0)
        try:
            arg3 = bytes.fromhex(line.get("arg3", ""))
        except (TypeError, ValueError):
            raise ScriptError(f"arg3 must be a hex string, got {line.get('arg3')!r}") from None
        try:
            requested = uuid.UUID(str(line["uuid"])) if "uuid" in line else expected
        except ValueError:
            raise ScriptError(f"uuid is not a UUID: {line['uuid']!r}") from None
        if dimm is None and requested == INTEL_BUS_UUID:  # the root's second family, as its _DSM routes it
            handle, expected = page.INTEL_BUS_HANDLE, INTEL_BUS_UUID
        return DsmCall(handle, revision, function, arg3, vcpu, requested, expected)

    def run_line(self, text: str) -> dict[str, Any]:
        """Run one script line; every failure short of a dead daemon is an error object."""
        try:
            line = json.loads(text)
            if not isinstance(line, dict):
                raise ScriptError("a script line must be a JSON object")
            if "events" in line:
                return self.events(poll=line.get("poll") is True)
            if "read" in line:
                gpa, length = _int_field(line, "read", None), _int_field(line, "length", None)
                _check_range("read", gpa, length)
                return {"data": self.read_memory(gpa, length, vcpu=_int_field(line, "vcpu", 0)).hex()}
            if "write" in line:
                gpa = _int_field(line, "write", None)
                try:
                    data = bytes.fromhex(line.get("data", ""))
                except (TypeError, ValueError):
                    raise ScriptError("data must be a hex string") from None
                _check_range("write", gpa, len(data))
                self.write_memory(gpa, data, vcpu=_int_field(line, "vcpu", 0))
                return {"ok": True}
            if "function" in line:
                return self.call(self.parse_call(line)).as_json()
            raise ScriptError("a line needs \"function\", \"read\" or \"write\"")
        except json.JSONDecodeError as e:
            return {"error": f"not JSON: {e}"}
        except MachineCheck as e:
            return {"error": str(e), "mce": e.mce}
        except (DomainCrashed, ProtocolError, ConnectionError, EOFError) as e:
            # before HypervisorError: a crashed domain is one, and no call can follow it
            raise DaemonGone(str(e)) from e
        except (ScriptError, HypervisorError, ValueError) as e:
            return {"error": str(e)}

    def read_memory(self, gpa: int, length: int, *, vcpu: int = 0) -> bytes:
        """Read guest memory as the guest's CPU would: RAM directly, MMIO through accesses."""
        if not 0 <= length <= 1 << 20:
            raise ScriptError(f"length must be between 0 and 1 MiB, got {length}")
        conn = self.vcpu(vcpu)
        try:
            return conn.read_memory(gpa, length)
        except ValueError:
            pass
        out = bytearray()
        for offset in range(0, length, 8):
            width = _width(gpa + offset, length - offset)
            out += _read_or_mce(conn, gpa + offset, width).to_bytes(width, "little")
        return bytes(out[:length])

    def write_memory(self, gpa: int, data: bytes, *, vcpu: int = 0) -> None:
        conn = self.vcpu(vcpu)
        try:
            conn.write_memory(gpa, data)
            return
        except ValueError:
            pass
        offset = 0
        while offset < len(data):
            width = _width(gpa + offset, len(data) - offset)
            conn.mmio_write(gpa + offset, width, int.from_bytes(data[offset : offset + width], "little"))
            offset += width


def _read_or_mce(conn: GuestConnection, gpa: int, width: int) -> int:
    """One memory read; consumed poison (EHWPOISON from the simulator) becomes `MachineCheck`."""
    try:
        return conn.mmio_read(gpa, width)
    except HypervisorError as e:
        if e.errno == EHWPOISON:
            raise MachineCheck(f"machine check: {e.message}", {"vector": MCE_VECTOR, "address": gpa,
                                                               "length": width}) from None
        raise


def _check_range(name: str, gpa: int, length: int) -> None:
    """A guest physical access must end inside the 64-bit address space a vCPU can reach."""
    if gpa + max(length, 1) > ADDRESS_SPACE_END:
        raise ScriptError(f"{name}: {length} bytes at {gpa:#x} pass the end of the 64-bit address space")


def _width(gpa: int, remaining: int) -> int:
    """The widest naturally aligned access (≤ 8 bytes) at `gpa` that fits `remaining`."""
    for width in (8, 4, 2, 1):
        if gpa % width == 0 and remaining >= width:
            return width
    return 1


def _status(out: bytes) -> int | None:
    return int.from_bytes(out[:4], "little") if len(out) >= 4 else None


def _int_field(line: dict[str, Any], name: str, default: int | None) -> int:
    value = line.get(name, default)
    if value is None:
        raise ScriptError(f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ScriptError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def run_script(guest: Guest, lines: IO[str], out: IO[str]) -> int:
    """Run a JSON Lines script; 0 when it ran to the end, 1 when the daemon stopped answering."""
    try:
        for text in lines:
            if not text.strip():
                continue
            try:
                result = guest.run_line(text)
            except DaemonGone as e:
                out.write(json.dumps({"error": f"device model stopped answering: {e}"}) + "\n")
                out.flush()
                return 1
            out.write(json.dumps(result) + "\n")
            out.flush()
        return 0
    finally:
        guest.close()
