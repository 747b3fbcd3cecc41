"""NVDIMM operator commands (pmemd's own; QEMU has none): poison, health, scrub, labels.

    pmemd-query-poison  {limit?}                      poisoned and injected ranges (first `limit`) and counts
    pmemd-inject-poison {address, length, notify?}    poison a guest SPA range as an injected error (root fn 7)
    pmemd-clear-poison  {address, length}             forget injected errors there (root fn 8)
    pmemd-query-health  {slot?}                       each DIMM's SMART health as the guest reads it
    pmemd-set-health    {slot, health?, spares?, life-used?, media-temperature?, ctrl-temperature?,
                         fatal?, dirty-shutdown?}     change base sensors / injected conditions
    pmemd-start-scrub   {slot? | address, length}     start an ARS scrub (as root fn 2 would)
    pmemd-query-scrub                                 the last scrub: range, state, records
    pmemd-query-labels  {slot?}                       label area size and index usage (slots in use)
    pmemd-query-firmware {slot?}                      Intel DIMMs' firmware: running/staged version,
                                                      activation arming and result, update in flight
Temperatures are °C. Changes the guest must hear about queue its ACPI Notify 0x81 as the
`_DSM` handlers do (health: when the DIMM needs attention, nfit_test's rule; poison: with
`notify`), which the server reports as PMEMD_HEALTH_CHANGED / PMEMD_MEDIA_ERRORS events.
"""

from __future__ import annotations

from typing import Any

from pmemd.dsm.firmware import RESULT_NONE, RESULT_NOT_STAGED, RESULT_SUCCESS
from pmemd.dsm.health import (
    ALARM_CTRL_TEMPERATURE,
    ALARM_MEDIA_TEMPERATURE,
    ALARM_SPARES,
    HEALTH_CRITICAL,
    HEALTH_FATAL,
    HEALTH_NON_CRITICAL,
    Health,
    encode_temperature,
    temperature_sixteenths,
)
from pmemd.dsm.inject import clear_injected_error, inject_error
from pmemd.dsm.notify import NOTIFY_HEALTH, queue_notify
from pmemd.dsm.poison import PoisonLimitError
from pmemd.dsm.root_layouts import ARS_TYPE_PERSISTENT
from pmemd.dsm.spa import pmem_holding

from .control import GuestControl
from .errors import QmpError
from .label_usage import label_usage
from .registry import command
from .schema import Param

HEALTH_NAMES = {"non-critical": HEALTH_NON_CRITICAL, "critical": HEALTH_CRITICAL, "fatal": HEALTH_FATAL}
ALARM_NAMES = {"spares": ALARM_SPARES, "media-temperature": ALARM_MEDIA_TEMPERATURE,
               "ctrl-temperature": ALARM_CTRL_TEMPERATURE}
DEFAULT_POISON_LIMIT = 4096
MAX_POISON_LIMIT = 1 << 16


def _ranges(pairs: Any, limit: int) -> list[dict[str, int]]:
    out: list[dict[str, int]] = []
    for address, length in pairs:
        if len(out) == limit:
            break
        out.append({"address": address, "length": length})
    return out


@command("pmemd-query-poison", Param("limit", "int", required=False, lo=0, hi=MAX_POISON_LIMIT))
def query_poison(ctl: GuestControl, limit: int = DEFAULT_POISON_LIMIT) -> dict[str, Any]:
    """Poisoned ranges (all sources) and the injected subset, first `limit` of each."""
    media = ctl.root.media
    return {
        "poison": _ranges(media.poison, limit),
        "poison-count": len(media.poison),
        "injected": _ranges(media.injected, limit),
        "injected-count": len(media.injected),
    }


@command("pmemd-inject-poison", Param("address", "int"), Param("length", "int", lo=1),
         Param("notify", "bool", required=False))
def inject_poison(ctl: GuestControl, address: int, length: int, notify: bool = False) -> dict[str, Any]:
    """Poison [address, address + length) as an injected error; `notify` raises root Notify 0x81."""
    try:
        inject_error(ctl.root, address, length, notify=notify)
    except (ValueError, PoisonLimitError) as e:
        raise QmpError(str(e)) from None
    return {}


@command("pmemd-clear-poison", Param("address", "int"), Param("length", "int", lo=1))
def clear_poison(ctl: GuestControl, address: int, length: int) -> dict[str, Any]:
    """Forget the injected errors in [address, address + length) and the poison they caused."""
    try:
        clear_injected_error(ctl.root, address, length)
    except (ValueError, PoisonLimitError) as e:
        raise QmpError(str(e)) from None
    return {}


def _celsius(raw: int) -> float:
    return temperature_sixteenths(raw) / 16


def health_info(slot: int, h: Health) -> dict[str, Any]:
    """One DIMM's health as the guest reads it (SMART fn 1 and 2), with the injected overrides."""
    t = h.thresholds
    alarms = h.alarm_flags()
    return {
        "slot": slot,
        "id": f"nvdimm{slot}",
        "health": [n for n, bit in HEALTH_NAMES.items() if h.effective_health & bit],
        "spares": h.effective_spares,
        "life-used": h.life_used,
        "media-temperature": _celsius(h.effective_media_temperature),
        "ctrl-temperature": _celsius(h.ctrl_temperature),
        "alarms": [n for n, bit in ALARM_NAMES.items() if alarms & bit],
        "shutdown-state": "dirty" if h.shutdown_state else "clean",
        "dirty-shutdown-count": h.shutdown_count,
        "thresholds": {
            "alarms-enabled": [n for n, bit in ALARM_NAMES.items() if t.alarm_control & bit],
            "spares": t.spares,
            "media-temperature": _celsius(t.media_temperature),
            "ctrl-temperature": _celsius(t.ctrl_temperature),
        },
        "injected": {
            "media-temperature": None if h.injected_media_temperature is None else _celsius(h.injected_media_temperature),
            "spares": h.injected_spares,
            "fatal": h.injected_fatal,
        },
    }


def _slots(ctl: GuestControl, slot: int | None) -> list[int]:
    if slot is None:
        return sorted(ctl.dimms)
    ctl.dimm(slot)
    return [slot]


@command("pmemd-query-health", Param("slot", "int", required=False, hi=255))
def query_health(ctl: GuestControl, slot: int | None = None) -> list[dict[str, Any]]:
    """Each DIMM's health (or one slot's)."""
    return [health_info(s, ctl.dimm(s).health) for s in _slots(ctl, slot)]


@command(
    "pmemd-set-health",
    Param("slot", "int", hi=255),
    Param("health", "str-list", required=False),
    Param("spares", "int", required=False, hi=100),
    Param("life-used", "int", required=False, hi=100),
    Param("media-temperature", "number", required=False),
    Param("ctrl-temperature", "number", required=False),
    Param("fatal", "bool", required=False),
    Param("dirty-shutdown", "bool", required=False),
)
def set_health(
    ctl: GuestControl,
    slot: int,
    health: list[str] | None = None,
    spares: int | None = None,
    life_used: int | None = None,
    media_temperature: float | None = None,
    ctrl_temperature: float | None = None,
    fatal: bool | None = None,
    dirty_shutdown: bool | None = None,
) -> dict[str, Any]:
    """Set a DIMM's base sensors and conditions; every value is checked before any applies."""
    dimm = ctl.dimm(slot)
    flags = None
    if health is not None:
        unknown = [n for n in health if n not in HEALTH_NAMES]
        if unknown:
            raise QmpError(f"Parameter 'health' names unknown conditions {unknown} (known: {sorted(HEALTH_NAMES)})")
        flags = 0
        for name in health:
            flags |= HEALTH_NAMES[name]
    try:
        mtemp = None if media_temperature is None else encode_temperature(media_temperature)
        ctemp = None if ctrl_temperature is None else encode_temperature(ctrl_temperature)
    except ValueError as e:
        raise QmpError(f"temperature out of range: {e}") from None
    h = dimm.health
    if flags is not None:
        h.health = flags
    if spares is not None:
        h.spares = spares
    if life_used is not None:
        h.life_used = life_used
    if mtemp is not None:
        h.media_temperature = mtemp
    if ctemp is not None:
        h.ctrl_temperature = ctemp
    if fatal is not None:
        h.injected_fatal = fatal
    if dirty_shutdown is not None:
        h.dirty_shutdown() if dirty_shutdown else h.clean_shutdown()
    if h.needs_attention():
        queue_notify(dimm.pending_notifies, NOTIFY_HEALTH)
    return {}


def scrub_info(ctl: GuestControl) -> dict[str, Any]:
    media = ctl.root.media
    scrub = media.ars.current
    if scrub is None:
        return {"state": "idle"}
    result = media.ars.settle(media.poison, media.now())
    info: dict[str, Any] = {
        "seq": scrub.seq,
        "address": scrub.address,
        "length": scrub.length,
        "state": "running" if result is None else "complete",
    }
    if result is not None:
        info["records"] = [{"address": a, "length": n} for a, n in result.records]
        info["overflowed"] = result.overflowed
        if result.overflowed:
            info["restart-address"] = result.restart_address
            info["restart-length"] = result.restart_length
    return info


@command("pmemd-start-scrub", Param("slot", "int", required=False, hi=255),
         Param("address", "int", required=False), Param("length", "int", required=False, lo=1))
def start_scrub(ctl: GuestControl, slot: int | None = None, address: int | None = None,
                length: int | None = None) -> dict[str, Any]:
    """Scrub a DIMM's whole range (`slot`) or [address, address + length); PMEMD_SCRUB_COMPLETED at the end."""
    if slot is not None:
        if address is not None or length is not None:
            raise QmpError("give either 'slot' or 'address' and 'length', not both")
        nvdimm = ctl.dimm(slot).config
        address, length = nvdimm.address, nvdimm.pmem_size
    elif address is None or length is None:
        raise QmpError("give 'slot', or 'address' and 'length'")
    if pmem_holding(ctl.root.nvdimms, address, length) is None:
        raise QmpError(f"range ({address:#x}, {length:#x}) is not inside one NVDIMM's persistent memory")
    media = ctl.root.media
    now = media.now()
    if media.ars.busy(now):
        raise QmpError("a scrub is already running")
    scrub = media.ars.start(media.poison, address, length, ARS_TYPE_PERSISTENT, False, now)
    media.scrub_started()
    return {"seq": scrub.seq, "address": address, "length": length,
            "estimated-seconds": media.ars.estimated_seconds(scrub, now)}


@command("pmemd-query-scrub")
def query_scrub(ctl: GuestControl) -> dict[str, Any]:
    """The last scrub (idle when there was none), settled if its time is up."""
    return scrub_info(ctl)


@command("pmemd-query-labels", Param("slot", "int", required=False, hi=255))
def query_labels(ctl: GuestControl, slot: int | None = None) -> list[dict[str, Any]]:
    """Each DIMM's label area: its size and, when the guest formatted it, the index's slot usage."""
    out = []
    for s in _slots(ctl, slot):
        store = ctl.labels.get(s)
        if store is None:
            out.append({"slot": s, "label-area-size": 0, "index": {"valid": False, "reason": "no label area"}})
            continue
        try:
            index = label_usage(store)
        except OSError as e:
            raise QmpError(f"cannot read slot {s}'s label area: {e.strerror or e}") from None
        out.append({"slot": s, "label-area-size": store.size, "index": index})
    return out


FIRMWARE_RESULTS = {RESULT_NONE: "none", RESULT_NOT_STAGED: "not-staged", RESULT_SUCCESS: "success"}


@command("pmemd-query-firmware", Param("slot", "int", required=False, hi=255))
def query_firmware(ctl: GuestControl, slot: int | None = None) -> list[dict[str, Any]]:
    """Each Intel-family DIMM's firmware (or one slot's, which must be an Intel DIMM)."""
    slots = _slots(ctl, slot)
    if slot is not None and ctl.dimm(slot).config.family != "intel":
        raise QmpError(f"NVDIMM slot {slot} is not an Intel-family DIMM: it has no firmware functions")
    out = []
    for s in slots:
        dimm = ctl.dimm(s)
        if dimm.config.family != "intel":
            continue
        fw = dimm.firmware
        out.append({
            "slot": s,
            "running-version": f"{fw.running_version:#x}",
            "staged-version": f"{fw.staged_version:#x}" if fw.staged_version else None,
            "armed": fw.armed,
            "last-activation": FIRMWARE_RESULTS[fw.result],
            "update": fw.phase.value,
        })
    return out
