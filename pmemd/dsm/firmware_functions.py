"""Intel firmware update and activation as `_DSM` functions (Linux `intel.h` layouts).

DIMM (Intel family, revision 2; the state machine and its statuses are `firmware.Firmware`'s):

  fn 12 get info     no input → storage_size u32, max_send_len u32, query_interval u32 (µs),
                     max_query_time u32 (µs), update_cap u8, rsvd[3], fis_version u32,
                     run_version u64, updated_version u64 (40 bytes; updated = staged, 0 none)
  fn 13 start        no input → context u32
  fn 14 send data    context u32, offset u32, length u32, data[length] → status only
  fn 15 finish       ctrl_flags u8 (0 finish, 1 abort), rsvd[3], context u32 → status only
  fn 16 finish query context u32 → updated_fw_rev u64
  fn 29 activate info  no input → result u16, state u8, rsvd[7]
  fn 30 activate arm   activate_arm u8 (1 arm, 0 disarm) → status only

Bus (the root's Intel bus family, handle `INTEL_BUS_HANDLE`, revision 1):

  fn 1 activate info  no input → rsvd u16, state u8 (0 idle, 1 armed), capability u8
                      (bit 1: OS quiesce, Linux's "live" activation), activate/cpu-quiesce/
                      io-quiesce/max-quiesce timeouts u64 (µs)
  fn 2 activate       iodev_state u8 (0 force idle, 1 OS idle) → status only

A reply keeps its full size whatever its status, so ndctl's fixed-size parsers always find
their fields; a malformed input (wrong length, reserved bytes set) is status 3.
"""

from __future__ import annotations

from construct import Bytes, Const, GreedyBytes, Int8ul, Int16ul, Int32ul, Int64ul, Padding, Struct, Terminated

from .call import Call, InvalidInput, Reply, parse_input
from .devices import Dimm, IntelBus
from .firmware import (
    MAX_SEND_LEN,
    STATUS_INVALID_INPUT,
    STATUS_SUCCESS,
    STORAGE_SIZE,
    activate_bus,
    any_armed,
)
from .functions import FunctionTable

FN_GET_INFO = 12
FN_START_UPDATE = 13
FN_SEND_DATA = 14
FN_FINISH_UPDATE = 15
FN_FINISH_QUERY = 16
FN_ACTIVATE_INFO = 29
FN_ACTIVATE_ARM = 30
DIMM_REVISION = 2

FN_BUS_ACTIVATE_INFO = 1
FN_BUS_ACTIVATE = 2
BUS_REVISION = 1

QUERY_INTERVAL_US = 100_000
MAX_QUERY_TIME_US = 3_000_000
FIS_VERSION = 0x0201
CAPABILITY_OS_QUIESCE = 1 << 1
ACTIVATE_TIMEOUT_US = 1_000
MAX_QUIESCE_TIMEOUT_US = 1_000_000

NoInput = Struct(Terminated)

FwInfo = Struct(
    "storage_size" / Int32ul,
    "max_send_len" / Int32ul,
    "query_interval" / Int32ul,
    "max_query_time" / Int32ul,
    "update_cap" / Int8ul,
    Padding(3),
    "fis_version" / Int32ul,
    "run_version" / Int64ul,
    "updated_version" / Int64ul,
)
Context = Struct("context" / Int32ul)
ContextInput = Struct("context" / Int32ul, Terminated)
SendInput = Struct("context" / Int32ul, "offset" / Int32ul, "length" / Int32ul, "data" / GreedyBytes)
FinishInput = Struct("ctrl_flags" / Int8ul, "reserved" / Const(bytes(3), Bytes(3)), "context" / Int32ul, Terminated)
QueryOutput = Struct("updated_fw_rev" / Int64ul)
DimmActivateInfo = Struct("result" / Int16ul, "state" / Int8ul, Padding(7))
ArmInput = Struct("activate_arm" / Int8ul, Terminated)
BusActivateInfo = Struct(
    Padding(2),
    "state" / Int8ul,
    "capability" / Int8ul,
    "activate_tmo" / Int64ul,
    "cpu_quiesce_tmo" / Int64ul,
    "io_quiesce_tmo" / Int64ul,
    "max_quiesce_tmo" / Int64ul,
)
BusActivateInput = Struct("iodev_state" / Int8ul, Terminated)


def get_info(call: Call, dimm: Dimm) -> Reply:
    """Fn 12: limits and versions (running, and staged or 0)."""
    parse_input(NoInput, call.input)
    fw = dimm.firmware
    return Reply.success(FwInfo.build({
        "storage_size": STORAGE_SIZE,
        "max_send_len": MAX_SEND_LEN,
        "query_interval": QUERY_INTERVAL_US,
        "max_query_time": MAX_QUERY_TIME_US,
        "update_cap": 0,
        "fis_version": FIS_VERSION,
        "run_version": fw.running_version,
        "updated_version": fw.staged_version,
    }))


def start_update(call: Call, dimm: Dimm) -> Reply:
    """Fn 13: open an update session."""
    parse_input(NoInput, call.input)
    status, context = dimm.firmware.start()
    return Reply(status, Context.build({"context": context}))


def send_data(call: Call, dimm: Dimm) -> Reply:
    """Fn 14: one chunk of the image."""
    r = parse_input(SendInput, call.input)
    if len(r.data) != r.length:
        raise InvalidInput(f"send data announces {r.length} bytes and carries {len(r.data)}")
    return Reply(dimm.firmware.send(r.context, r.offset, r.data))


def finish_update(call: Call, dimm: Dimm) -> Reply:
    """Fn 15: finish (verify) or abort."""
    r = parse_input(FinishInput, call.input)
    return Reply(dimm.firmware.finish(r.context, r.ctrl_flags))


def finish_query(call: Call, dimm: Dimm) -> Reply:
    """Fn 16: the verdict of the finished update."""
    r = parse_input(ContextInput, call.input)
    status, version = dimm.firmware.query(r.context)
    return Reply(status, QueryOutput.build({"updated_fw_rev": version}))


def activate_info(call: Call, dimm: Dimm) -> Reply:
    """Fn 29: armed or idle, and the result of the last activation."""
    parse_input(NoInput, call.input)
    fw = dimm.firmware
    return Reply.success(DimmActivateInfo.build({"result": fw.result, "state": fw.activate_state}))


def activate_arm(call: Call, dimm: Dimm) -> Reply:
    """Fn 30: arm (1) or disarm (0)."""
    arm = parse_input(ArmInput, call.input).activate_arm
    if arm not in (0, 1):
        return Reply(STATUS_INVALID_INPUT)
    dimm.firmware.set_armed(bool(arm))
    return Reply(STATUS_SUCCESS)


def bus_activate_info(call: Call, bus: IntelBus) -> Reply:
    """Bus fn 1: armed when any Intel DIMM is; "live" (OS-quiesce) activation."""
    parse_input(NoInput, call.input)
    return Reply.success(BusActivateInfo.build({
        "state": 1 if any_armed(bus.firmware) else 0,
        "capability": CAPABILITY_OS_QUIESCE,
        "activate_tmo": ACTIVATE_TIMEOUT_US,
        "cpu_quiesce_tmo": ACTIVATE_TIMEOUT_US,
        "io_quiesce_tmo": ACTIVATE_TIMEOUT_US,
        "max_quiesce_tmo": MAX_QUIESCE_TIMEOUT_US,
    }))


def bus_activate(call: Call, bus: IntelBus) -> Reply:
    """Bus fn 2: activate the armed DIMMs' staged firmware."""
    iodev_state = parse_input(BusActivateInput, call.input).iodev_state
    if iodev_state not in (0, 1):
        return Reply(STATUS_INVALID_INPUT)
    return Reply(activate_bus(bus.firmware))


def register_firmware_functions(table: FunctionTable[Dimm]) -> None:
    """Add fns 12-16, 29 and 30 (revision 2) to an Intel DIMM table."""
    for function, handler in (
        (FN_GET_INFO, get_info),
        (FN_START_UPDATE, start_update),
        (FN_SEND_DATA, send_data),
        (FN_FINISH_UPDATE, finish_update),
        (FN_FINISH_QUERY, finish_query),
        (FN_ACTIVATE_INFO, activate_info),
        (FN_ACTIVATE_ARM, activate_arm),
    ):
        table.register(function, DIMM_REVISION, handler)


def intel_bus_functions() -> FunctionTable[IntelBus]:
    """The root's Intel bus family: fns 1 and 2, offered only when the bus has Intel DIMMs."""
    table: FunctionTable[IntelBus] = FunctionTable("intel-bus")
    for function, handler in ((FN_BUS_ACTIVATE_INFO, bus_activate_info), (FN_BUS_ACTIVATE, bus_activate)):
        table.register(function, BUS_REVISION, handler, available=lambda bus: bool(bus.dimms))
    return table
