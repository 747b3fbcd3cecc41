"""A virtual Intel DIMM's firmware: the update state machine, staging, arming and activation.

Update (Intel fns 13-16, driven by `ndctl update-firmware`), one session at a time:

    IDLE --start--> RECEIVING(context) --send*--> RECEIVING --finish(0)--> FINISHED(verdict)
    RECEIVING/FINISHED --finish(1) "abort"--> IDLE            (status 0x40007: aborted)
    FINISHED --query--> IDLE; a verified image becomes the staged ("next") version

`finish` verifies the bytes received (`firmware_image.verify_image`); `query` reports the
verdict: the image's version (status 0) or 0x30007 "verification failed" (the staged image,
if any, stays). Statuses, as Linux's and ndctl's `intel.h` name them:

    start   busy (a session is open)                     0x10007
    send    no session, or another context               0x10007
            empty, longer than `MAX_SEND_LEN`, past `STORAGE_SIZE`,
            or starting beyond the bytes received (a gap) 3
    finish  no session, or another context               0x10007
            finish twice                                 0x20007  (already done)
            ctrl_flags other than 0 (finish) or 1 (abort) 3
    query   no session, or another context               0x10007  (so a replayed query fails)
            before finish                                0x40007  (sequence error)
            image refused                                0x30007

Contexts count up across sessions and daemon restarts (saved), so a context from an old
session never matches a new one.

Activation (Intel fns 29/30, bus fns 1/2; the kernel's `nmemX/firmware/activate` and
`ndbusX/firmware/activate`): a DIMM is armed or idle; the bus activates every armed DIMM
at once — a staged version becomes the running one (result "success"), an armed DIMM with
nothing staged reports "not staged" — and disarms them. A daemon start is the DIMM's power
cycle: a version still staged then becomes the running one (`power_on`), as real DIMMs
apply staged firmware at a cold boot; an upload in flight is lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from construct import Array, GreedyBytes, Int8ul, Int16ul, Int32ul, Int64ul, Prefixed, Struct, Terminated, this

from acpi.dsm_buffer import MAX_INPUT

from .firmware_image import ImageRejected, verify_image
from .state_blob import StateFormatError, parse_body, unwrap, wrap

STORAGE_SIZE = 1 << 20
"""The largest image a DIMM stores (fn 12's storage_size); ndctl refuses larger files itself."""
SEND_HEADER_SIZE = 12  # context, offset, length
MAX_SEND_LEN = MAX_INPUT - SEND_HEADER_SIZE
"""The most image bytes one fn 14 call carries: the DSM page's input less the send header."""
INITIAL_VERSION = 0x0000_0001_0000_0000
"""The version a new virtual DIMM runs (major 1)."""

STATUS_SUCCESS = 0
STATUS_INVALID_INPUT = 3
STATUS_CONTEXT_INVALID = 0x10007  # also "start: busy"
STATUS_START_BUSY = 0x10007
STATUS_FINISH_DONE = 0x20007
STATUS_BAD_IMAGE = 0x30007
STATUS_ABORTED = 0x40007
STATUS_SEQUENCE = 0x40007  # query before finish

FINISH = 0
ABORT = 1

# Activation (fns 29/30, bus fns 1/2): state and result codes of Linux's intel.h.
FWA_IDLE = 0
FWA_ARMED = 1
RESULT_NONE = 0
RESULT_NOT_STAGED = 1
RESULT_SUCCESS = 2
RESULTS = (RESULT_NONE, RESULT_NOT_STAGED, RESULT_SUCCESS)
BUS_STATUS_NO_ARM = 6 | 1 << 16  # no DIMM armed
BUS_STATUS_NO_FIRMWARE = 6 | 3 << 16  # armed DIMMs, none with staged firmware


class Phase(Enum):
    IDLE = "idle"
    RECEIVING = "receiving"
    FINISHED = "finished"


@dataclass
class Firmware:
    """One DIMM's firmware; see the module docstring for the machine and its statuses."""

    running_version: int = INITIAL_VERSION
    staged_version: int = 0  # 0: nothing staged
    armed: bool = False
    result: int = RESULT_NONE  # of the last activation this DIMM took part in
    last_context: int = 0
    # The open session (not saved: a daemon restart power-cycles the DIMM).
    phase: Phase = Phase.IDLE
    context: int = 0
    image: bytearray = field(default_factory=bytearray)
    verdict: int | None = None  # verified version, None when refused
    refusal: str = ""

    # -- update ----------------------------------------------------------------------------

    def start(self) -> tuple[int, int]:
        """Fn 13: (status, context)."""
        if self.phase is not Phase.IDLE:
            return STATUS_START_BUSY, 0
        self.last_context = self.last_context % 0xFFFFFFFF + 1  # 1..2^32-1, never 0
        self.context = self.last_context
        self.phase = Phase.RECEIVING
        self.image = bytearray()
        return STATUS_SUCCESS, self.context

    def send(self, context: int, offset: int, data: bytes) -> int:
        """Fn 14: store `data` at `offset` of the image being received."""
        if self.phase is not Phase.RECEIVING or context != self.context:
            return STATUS_CONTEXT_INVALID
        if not 0 < len(data) <= MAX_SEND_LEN or offset + len(data) > STORAGE_SIZE or offset > len(self.image):
            return STATUS_INVALID_INPUT
        self.image[offset:offset + len(data)] = data
        return STATUS_SUCCESS

    def finish(self, context: int, ctrl_flags: int) -> int:
        """Fn 15: verify what was received (0), or abort the session (1)."""
        if ctrl_flags not in (FINISH, ABORT):
            return STATUS_INVALID_INPUT
        if self.phase is Phase.IDLE or context != self.context:
            return STATUS_CONTEXT_INVALID
        if ctrl_flags == ABORT:
            self._close()
            return STATUS_ABORTED
        if self.phase is Phase.FINISHED:
            return STATUS_FINISH_DONE
        try:
            self.verdict, self.refusal = verify_image(bytes(self.image)).version, ""
        except ImageRejected as e:
            self.verdict, self.refusal = None, str(e)
        self.phase = Phase.FINISHED
        self.image = bytearray()
        return STATUS_SUCCESS

    def query(self, context: int) -> tuple[int, int]:
        """Fn 16: (status, version staged by this update); ends the session once answered."""
        if self.phase is Phase.IDLE or context != self.context:
            return STATUS_CONTEXT_INVALID, 0
        if self.phase is Phase.RECEIVING:
            return STATUS_SEQUENCE, 0
        verdict = self.verdict
        self._close()
        if verdict is None:
            return STATUS_BAD_IMAGE, 0
        self.staged_version = verdict
        return STATUS_SUCCESS, verdict

    def _close(self) -> None:
        self.phase, self.context, self.image, self.verdict = Phase.IDLE, 0, bytearray(), None

    # -- activation ------------------------------------------------------------------------

    def set_armed(self, arm: bool) -> None:
        """Fn 30: arm (or disarm) this DIMM for the next bus-wide activation."""
        self.armed = arm

    @property
    def activate_state(self) -> int:
        return FWA_ARMED if self.armed else FWA_IDLE

    def activate(self) -> bool:
        """Take part in a bus activation (armed DIMMs only); True when a staged version now runs."""
        self.armed = False
        if not self.staged_version:
            self.result = RESULT_NOT_STAGED
            return False
        self.running_version, self.staged_version = self.staged_version, 0
        self.result = RESULT_SUCCESS
        return True

    def power_on(self) -> None:
        """A new daemon: the DIMM's cold boot. A staged version starts running; arming is gone."""
        if self.staged_version:
            self.running_version, self.staged_version = self.staged_version, 0
        self.armed = False
        self._close()

    # -- saved form ------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The versioned blob (kind b"FIRM"): versions, arming, last result and context."""
        body = FirmwareBodyV1.build({
            "running_version": self.running_version,
            "staged_version": self.staged_version,
            "armed": int(self.armed),
            "result": self.result,
            "last_context": self.last_context,
        })
        return wrap(BLOB_KIND, BLOB_VERSION, body)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Firmware:
        """Errors: `StateFormatError` for a corrupt or newer blob or out-of-range values."""
        _, body = unwrap(BLOB_KIND, BLOB_VERSION, blob)
        b = parse_body(FirmwareBodyV1, body)
        if b.running_version == 0 or b.armed > 1 or b.result not in RESULTS:
            raise StateFormatError("firmware blob holds out-of-range values")
        return cls(b.running_version, b.staged_version, bool(b.armed), b.result, b.last_context)


BLOB_KIND = b"FIRM"
BLOB_VERSION = 1

FirmwareBodyV1 = Struct(
    "running_version" / Int64ul,
    "staged_version" / Int64ul,
    "armed" / Int8ul,
    "result" / Int16ul,
    "last_context" / Int32ul,
    Terminated,
)


def any_armed(firmware: list[Firmware]) -> bool:
    return any(f.armed for f in firmware)


def activate_bus(firmware: list[Firmware]) -> int:
    """Bus fn 2: activate every armed DIMM at once; the bus status (0, or why nothing ran)."""
    armed = [f for f in firmware if f.armed]
    if not armed:
        return BUS_STATUS_NO_ARM
    activated = [f.activate() for f in armed]
    return STATUS_SUCCESS if any(activated) else BUS_STATUS_NO_FIRMWARE


# -- the firmware file: every Intel DIMM's saved firmware, by slot ----------------------------

FILE_KIND = b"FWFL"
FILE_VERSION = 1

FirmwareFileBodyV1 = Struct(
    "count" / Int16ul,
    "dimms" / Array(this.count, Struct("slot" / Int16ul, "firmware" / Prefixed(Int32ul, GreedyBytes))),
    Terminated,
)


def firmware_file_bytes(firmware: Mapping[int, Firmware]) -> bytes:
    """slot -> firmware as one versioned blob (the daemon's firmware file)."""
    entries = [{"slot": slot, "firmware": f.to_bytes()} for slot, f in sorted(firmware.items())]
    return wrap(FILE_KIND, FILE_VERSION, FirmwareFileBodyV1.build({"count": len(entries), "dimms": entries}))


def parse_firmware_file(blob: bytes) -> dict[int, Firmware]:
    """The slot -> firmware a `firmware_file_bytes` blob holds. Errors: `StateFormatError`."""
    _, body = unwrap(FILE_KIND, FILE_VERSION, blob)
    parsed = parse_body(FirmwareFileBodyV1, body)
    firmware = {entry.slot: Firmware.from_bytes(entry.firmware) for entry in parsed.dimms}
    if len(firmware) != parsed.count:
        raise StateFormatError("firmware file lists a DIMM slot twice")
    return firmware
