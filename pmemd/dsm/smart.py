"""Intel DIMM functions 1, 2, 10 (revision 1) and 17, 18 (revision 2): SMART health and friends.

Layouts per Linux `nd_intel_smart*` (reference: linux-nfit.md §8):

  fn 1   no input → 128-byte SMART body (132-byte reply with the status word)
  fn 2   no input → thresholds: alarm_control u16, spares u8, media/ctrl temperature u16, rsvd u8
  fn 10  enable u8 (0 or 1, else 3) → status only: latch system shutdown status
  fn 17  alarm_control u16, spares u8, media/ctrl temperature u16 (7 bytes) → status only
  fn 18  flags u64, mtemp_enable u8, media_temperature u16, spare_enable u8, spares u8,
         fatal_enable u8, unsafe_shutdown_enable u8 (15 bytes) → status only

Reserved bits, enables other than 0/1 and percentages over 100 → status 3. After fns 17 and
18, a DIMM whose state calls for attention (threshold crossed, critical/fatal health, dirty
shutdown) queues DIMM Notify 0x81, as nfit_test's `smart_notify`.
"""

from __future__ import annotations

from construct import Container, Int8ul, Int16ul, Int32ul, Int64ul, Padding, Struct, Terminated

from .call import Call, InvalidInput, Reply, parse_input
from .devices import Dimm
from .functions import FunctionTable
from .health import ALARM_ALL, Health
from .notify import NOTIFY_HEALTH, queue_notify

FN_SMART = 1
FN_SMART_THRESHOLD = 2
FN_LATCH_SHUTDOWN_STATUS = 10
FN_SET_SMART_THRESHOLD = 17
FN_INJECT_SMART = 18

# SMART valid-field bits (which body fields carry data).
VALID_HEALTH = 1 << 0
VALID_SPARES = 1 << 1
VALID_USED = 1 << 2
VALID_MEDIA_TEMPERATURE = 1 << 3
VALID_CTRL_TEMPERATURE = 1 << 4
VALID_SHUTDOWN_COUNT = 1 << 5
VALID_ALARM_FLAGS = 1 << 9
VALID_SHUTDOWN_STATE = 1 << 10
SMART_VALID = (
    VALID_HEALTH | VALID_SPARES | VALID_USED | VALID_MEDIA_TEMPERATURE | VALID_CTRL_TEMPERATURE
    | VALID_SHUTDOWN_COUNT | VALID_ALARM_FLAGS | VALID_SHUTDOWN_STATE
)
"""nfit_test's set: no AIT status, PMIC temperature or vendor data on a virtual DIMM."""

INJECT_MEDIA_TEMPERATURE = 1 << 0
INJECT_SPARES = 1 << 1
INJECT_FATAL = 1 << 2
INJECT_UNSAFE_SHUTDOWN = 1 << 3
INJECT_ALL = INJECT_MEDIA_TEMPERATURE | INJECT_SPARES | INJECT_FATAL | INJECT_UNSAFE_SHUTDOWN

NoInput = Struct(Terminated)

SmartBody = Struct(  # offsets within the 128-byte body (the reply adds 4 for the status)
    "flags" / Int32ul,  # @0 valid-field bits
    Padding(4),  # @4
    "health" / Int8ul,  # @8
    "spares" / Int8ul,  # @9
    "life_used" / Int8ul,  # @10
    "alarm_flags" / Int8ul,  # @11
    "media_temperature" / Int16ul,  # @12
    "ctrl_temperature" / Int16ul,  # @14
    "shutdown_count" / Int32ul,  # @16
    "ait_status" / Int8ul,  # @20
    "pmic_temperature" / Int16ul,  # @21
    Padding(8),  # @23
    "shutdown_state" / Int8ul,  # @31
    "vendor_size" / Int32ul,  # @32
    Padding(92),  # @36 vendor data
)

ThresholdFields = Struct(
    "alarm_control" / Int16ul,
    "spares" / Int8ul,
    "media_temperature" / Int16ul,
    "ctrl_temperature" / Int16ul,
)
ThresholdOutput = Struct("thresholds" / ThresholdFields, Padding(1))
SetThresholdInput = Struct("thresholds" / ThresholdFields, Terminated)

LatchInput = Struct("enable" / Int8ul, Terminated)

InjectSmartInput = Struct(
    "flags" / Int64ul,
    "mtemp_enable" / Int8ul,
    "media_temperature" / Int16ul,
    "spare_enable" / Int8ul,
    "spares" / Int8ul,
    "fatal_enable" / Int8ul,
    "unsafe_shutdown_enable" / Int8ul,
    Terminated,
)


def get_smart(call: Call, dimm: Dimm) -> Reply:
    """Fn 1: the health a guest reads at DIMM registration and ndctl shows."""
    parse_input(NoInput, call.input)
    h = dimm.health
    body = SmartBody.build(
        {
            "flags": SMART_VALID,
            "health": h.effective_health,
            "spares": h.effective_spares,
            "life_used": h.life_used,
            "alarm_flags": h.alarm_flags(),
            "media_temperature": h.effective_media_temperature,
            "ctrl_temperature": h.ctrl_temperature,
            "shutdown_count": h.shutdown_count,
            "ait_status": 0,
            "pmic_temperature": 0,
            "shutdown_state": h.shutdown_state,
            "vendor_size": 0,
        }
    )
    return Reply.success(body)


def get_smart_threshold(call: Call, dimm: Dimm) -> Reply:
    """Fn 2: the alarm thresholds."""
    parse_input(NoInput, call.input)
    t = dimm.health.thresholds
    fields = {
        "alarm_control": t.alarm_control,
        "spares": t.spares,
        "media_temperature": t.media_temperature,
        "ctrl_temperature": t.ctrl_temperature,
    }
    return Reply.success(ThresholdOutput.build({"thresholds": fields}))


def latch_shutdown_status(call: Call, dimm: Dimm) -> Reply:
    """Fn 10: enable (1) or disable (0) latching of the system shutdown status."""
    enable = parse_input(LatchInput, call.input).enable
    if enable not in (0, 1):
        raise InvalidInput(f"latch enable {enable} is neither 0 nor 1")
    dimm.health.latch_shutdown_status = bool(enable)
    return Reply.success()


def set_smart_threshold(call: Call, dimm: Dimm) -> Reply:
    """Fn 17: replace the alarm thresholds; a threshold already crossed raises Notify 0x81."""
    t = parse_input(SetThresholdInput, call.input).thresholds
    if t.alarm_control & ~ALARM_ALL:
        raise InvalidInput(f"reserved alarm control bits {t.alarm_control:#x}")
    _check_percent("spares threshold", t.spares)
    thresholds = dimm.health.thresholds
    thresholds.alarm_control = t.alarm_control
    thresholds.spares = t.spares
    thresholds.media_temperature = t.media_temperature
    thresholds.ctrl_temperature = t.ctrl_temperature
    _notify_if_needed(dimm)
    return Reply.success()


def inject_smart(call: Call, dimm: Dimm) -> Reply:
    """Fn 18: set or lift injected conditions; every selected condition is validated before any applies."""
    r = parse_input(InjectSmartInput, call.input)
    if r.flags & ~INJECT_ALL:
        raise InvalidInput(f"reserved SMART inject flags {r.flags:#x}")
    selected = [
        (INJECT_MEDIA_TEMPERATURE, "mtemp_enable", r.mtemp_enable),
        (INJECT_SPARES, "spare_enable", r.spare_enable),
        (INJECT_FATAL, "fatal_enable", r.fatal_enable),
        (INJECT_UNSAFE_SHUTDOWN, "unsafe_shutdown_enable", r.unsafe_shutdown_enable),
    ]
    for bit, name, enable in selected:
        if r.flags & bit and enable not in (0, 1):
            raise InvalidInput(f"{name} {enable} is neither 0 nor 1")
    if r.flags & INJECT_SPARES and r.spare_enable:
        _check_percent("injected spares", r.spares)
    _apply_injection(dimm.health, r.flags, r)
    _notify_if_needed(dimm)
    return Reply.success()


def register_smart_functions(table: FunctionTable[Dimm]) -> None:
    """Add fns 1, 2, 10 (revision 1) and 17, 18 (revision 2) to an Intel DIMM table."""
    for function, revision, handler in (
        (FN_SMART, 1, get_smart),
        (FN_SMART_THRESHOLD, 1, get_smart_threshold),
        (FN_LATCH_SHUTDOWN_STATUS, 1, latch_shutdown_status),
        (FN_SET_SMART_THRESHOLD, 2, set_smart_threshold),
        (FN_INJECT_SMART, 2, inject_smart),
    ):
        table.register(function, revision, handler)


def _apply_injection(h: Health, flags: int, r: Container) -> None:
    if flags & INJECT_MEDIA_TEMPERATURE:
        h.injected_media_temperature = r.media_temperature if r.mtemp_enable else None
    if flags & INJECT_SPARES:
        h.injected_spares = r.spares if r.spare_enable else None
    if flags & INJECT_FATAL:
        h.injected_fatal = bool(r.fatal_enable)
    if flags & INJECT_UNSAFE_SHUTDOWN:
        if r.unsafe_shutdown_enable:
            h.dirty_shutdown()
        else:
            h.clean_shutdown()


def _check_percent(name: str, value: int) -> None:
    if value > 100:
        raise InvalidInput(f"{name} {value}% is over 100%")


def _notify_if_needed(dimm: Dimm) -> None:
    if dimm.health.needs_attention():
        queue_notify(dimm.pending_notifies, NOTIFY_HEALTH)

