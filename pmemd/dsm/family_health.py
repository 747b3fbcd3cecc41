"""Health for the non-Intel DIMM families, answered from the same `Health` model as Intel SMART.

One DIMM health (`dimm.health`: sensors, thresholds, injected conditions, shutdown state) is
read through whichever `_DSM` family the DIMM speaks, so QMP's `pmemd-set-health`, Intel's
SMART injection and a dirty shutdown show up alike in `ndctl list -DH` for every family.
Layouts are those ndctl 76 reads (`ndctl/lib/{msft,hyperv,hpe1}.h`); all at revision 1, with
no input unless stated, and status 3 for any input that breaks the layout:

  MSFT fn 11 (NVDIMM health)  → health u16, temperature u16 (whole °C), error-threshold
      status u8, warning-threshold status u8, NVM lifetime u8 (% left), DRAM uncorrectable
      and correctable error counts u8 (9 bytes). ndctl reads "fatal" from a lifetime of 0,
      "critical" from health or error status ≠ 0, "non-critical" from warning status ≠ 0.
  Hyper-V fn 1 (health info)  → health u32: bit 0 critical, bit 2 fatal, bit 3 non-critical.
  Hyper-V fn 2 (shutdown info) → the dirty-shutdown count u32.
  HPE1 fn 1 (SMART)  input: in_valid_flags u32 (4 bytes) → the 124-byte SMART data with
      health, temperature (1/16 °C, as ndctl decodes it), spares, alarm trips, life used and
      last-shutdown status valid.

What a family's layout cannot carry is left out (MSFT has no spares field and no shutdown
state; Hyper-V only health and the count): `ndctl list -DH` then shows what that family shows.
"""

from __future__ import annotations

from construct import Int8ul, Int16ul, Int32ul, Padding, Struct, Terminated

from .call import Call, Reply, parse_input
from .devices import Dimm
from .functions import FunctionTable
from .health import (
    ALARM_CTRL_TEMPERATURE,
    ALARM_MEDIA_TEMPERATURE,
    ALARM_SPARES,
    HEALTH_CRITICAL,
    HEALTH_FATAL,
    HEALTH_NON_CRITICAL,
    temperature_sixteenths,
)

REVISION = 1
NoInput = Struct(Terminated)

# -- MSFT (NVDIMM_FAMILY_MSFT, 3) -------------------------------------------------------------

FN_MSFT_NVDIMM_HEALTH = 11

MSFT_THRESHOLD_NVM_LIFETIME = 1 << 0
MSFT_THRESHOLD_ES_TEMPERATURE = 1 << 2

MsftHealth = Struct(
    "health" / Int16ul,
    "temperature" / Int16ul,
    "error_threshold_status" / Int8ul,
    "warning_threshold_status" / Int8ul,
    "nvm_lifetime" / Int8ul,
    "dram_uncorrectable_errors" / Int8ul,
    "dram_correctable_errors" / Int8ul,
)


def msft_health(call: Call, dimm: Dimm) -> Reply:
    """MSFT fn 11: the health model in MSFT's 9-byte layout (see the module docstring)."""
    parse_input(NoInput, call.input)
    h = dimm.health
    health = h.effective_health
    alarms = h.alarm_flags()
    warnings = (MSFT_THRESHOLD_NVM_LIFETIME if alarms & ALARM_SPARES else 0) | (
        MSFT_THRESHOLD_ES_TEMPERATURE if alarms & (ALARM_MEDIA_TEMPERATURE | ALARM_CTRL_TEMPERATURE) else 0
    )
    if health & HEALTH_NON_CRITICAL and not warnings:
        warnings = MSFT_THRESHOLD_NVM_LIFETIME  # the only way MSFT's layout says "non-critical"
    body = MsftHealth.build(
        {
            "health": 1 if health & HEALTH_CRITICAL else 0,
            "temperature": _whole_celsius(h.effective_media_temperature),
            "error_threshold_status": 0,
            "warning_threshold_status": warnings,
            "nvm_lifetime": 0 if health & HEALTH_FATAL else 100 - h.life_used,
            "dram_uncorrectable_errors": 0,
            "dram_correctable_errors": 0,
        }
    )
    return Reply.success(body)


def _whole_celsius(raw: int) -> int:
    """A wire temperature as MSFT's unsigned whole degrees (below zero reads 0)."""
    return max(0, temperature_sixteenths(raw) // 16)


# -- Hyper-V (NVDIMM_FAMILY_HYPERV, 4) -----------------------------------------------------------

FN_HYPERV_HEALTH_INFO = 1
FN_HYPERV_SHUTDOWN_INFO = 2

HYPERV_CRITICAL = 1 << 0
HYPERV_FATAL = 1 << 2
HYPERV_NON_CRITICAL = 1 << 3

U32 = Struct("value" / Int32ul)


def hyperv_health_info(call: Call, dimm: Dimm) -> Reply:
    """Hyper-V fn 1: health bits (critical 0, fatal 2, non-critical 3)."""
    parse_input(NoInput, call.input)
    health = dimm.health.effective_health
    bits = (
        (HYPERV_CRITICAL if health & HEALTH_CRITICAL else 0)
        | (HYPERV_FATAL if health & HEALTH_FATAL else 0)
        | (HYPERV_NON_CRITICAL if health & HEALTH_NON_CRITICAL else 0)
    )
    return Reply.success(U32.build({"value": bits}))


def hyperv_shutdown_info(call: Call, dimm: Dimm) -> Reply:
    """Hyper-V fn 2: the dirty-shutdown count."""
    parse_input(NoInput, call.input)
    return Reply.success(U32.build({"value": dimm.health.shutdown_count}))


# -- HPE1 (NVDIMM_FAMILY_HPE1, 1) ---------------------------------------------------------------

FN_HPE1_SMART = 1

HPE1_VALID_HEALTH = 1 << 0
HPE1_VALID_TEMPERATURE = 1 << 1
HPE1_VALID_SPARES = 1 << 2
HPE1_VALID_ALARM = 1 << 3
HPE1_VALID_USED = 1 << 4
HPE1_VALID_SHUTDOWN = 1 << 5
HPE1_VALID = (
    HPE1_VALID_HEALTH | HPE1_VALID_TEMPERATURE | HPE1_VALID_SPARES | HPE1_VALID_ALARM | HPE1_VALID_USED
    | HPE1_VALID_SHUTDOWN
)
HPE1_TRIP_TEMPERATURE = 1 << 0
HPE1_TRIP_SPARES = 1 << 1
HPE1_LAST_SAVE_GOOD = 1 << 1

Hpe1SmartInput = Struct("in_valid_flags" / Int32ul, Terminated)

Hpe1Smart = Struct(  # 124 bytes after the status word
    "out_valid_flags" / Int32ul,
    "stat_summary" / Int8ul,  # the same health bits as Intel's
    "curr_temp" / Int16ul,
    "spare_blocks" / Int8ul,
    "alarm_trips" / Int16ul,
    "device_life" / Int8ul,
    "last_shutdown_stat" / Int8ul,
    Padding(124 - 12),  # operation durations and counts, module and energy-source status: none here
)


def hpe1_smart(call: Call, dimm: Dimm) -> Reply:
    """HPE1 fn 1: the fields the health model has, whatever `in_valid_flags` asked for."""
    parse_input(Hpe1SmartInput, call.input)
    h = dimm.health
    alarms = h.alarm_flags()
    body = Hpe1Smart.build(
        {
            "out_valid_flags": HPE1_VALID,
            "stat_summary": h.effective_health,
            "curr_temp": h.effective_media_temperature,
            "spare_blocks": h.effective_spares,
            "alarm_trips": (HPE1_TRIP_TEMPERATURE if alarms & (ALARM_MEDIA_TEMPERATURE | ALARM_CTRL_TEMPERATURE)
                            else 0) | (HPE1_TRIP_SPARES if alarms & ALARM_SPARES else 0),
            "device_life": h.life_used,
            "last_shutdown_stat": 0 if h.shutdown_state else HPE1_LAST_SAVE_GOOD,
        }
    )
    return Reply.success(body)


# -- registration ------------------------------------------------------------------------------


def register_msft_health(table: FunctionTable[Dimm]) -> None:
    table.register(FN_MSFT_NVDIMM_HEALTH, REVISION, msft_health)


def register_hyperv_health(table: FunctionTable[Dimm]) -> None:
    table.register(FN_HYPERV_HEALTH_INFO, REVISION, hyperv_health_info)
    table.register(FN_HYPERV_SHUTDOWN_INFO, REVISION, hyperv_shutdown_info)


def register_hpe1_health(table: FunctionTable[Dimm]) -> None:
    table.register(FN_HPE1_SMART, REVISION, hpe1_smart)

