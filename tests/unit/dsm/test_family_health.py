"""Health for HPE1, MSFT and Hyper-V DIMMs, read from the same health model as Intel SMART."""

from __future__ import annotations

from pathlib import Path

import pytest
from construct import Int32ul

from pmemd.config import from_mapping
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.call import Status
from pmemd.dsm.devices import Dimm
from pmemd.dsm.dispatcher import Dispatcher
from pmemd.dsm.family_health import Hpe1Smart, MsftHealth
from pmemd.dsm.health import HEALTH_CRITICAL, HEALTH_FATAL, HEALTH_NON_CRITICAL, encode_temperature
from pmemd.dsm.label_store import MemoryLabelStore
from pmemd.dsm.page import decode_reply, encode_request

MSFT, HYPERV, HPE1, INTEL = 1, 2, 3, 4  # handles of slots 0..3


def dispatcher() -> Dispatcher:
    families = ["msft", "hyperv", "hpe1", "intel"]
    config = from_mapping({"domid": 1, "nvdimm": [
        {"backing": f"nv{i}.img", "size": "2M", "family": f} for i, f in enumerate(families)
    ]}, base_dir=Path("/nonexistent"))
    return build_dispatcher(config, {slot: MemoryLabelStore(128 << 10) for slot in range(4)}).dispatcher


def call(d: Dispatcher, handle: int, function: int, data: bytes = b"") -> tuple[int, bytes]:
    payload = decode_reply(d.dispatch(encode_request(handle, 1, function, data)))
    return Int32ul.parse(payload[:4]), payload[4:]


def dimm(d: Dispatcher, handle: int) -> Dimm:
    return d.target(handle).device


def mask(d: Dispatcher, handle: int) -> int:
    return d.mask(handle, 1)


# What function 0 offers: the family's health, never the label functions (those go via _LSx).


@pytest.mark.parametrize("handle, functions", [(MSFT, {11}), (HYPERV, {1, 2}), (HPE1, {1})])
def test_non_intel_dimm_offers_its_health_functions_and_no_label_functions(handle: int, functions: set[int]) -> None:
    assert mask(dispatcher(), handle) == 1 | sum(1 << f for f in functions)


def test_label_functions_stay_callable_for_the_lsx_methods() -> None:
    assert call(dispatcher(), MSFT, 4)[0] == Status.SUCCESS


# MSFT function 11.


def test_msft_health_of_a_healthy_dimm() -> None:
    status, out = call(dispatcher(), MSFT, 11)
    h = MsftHealth.parse(out)
    assert (status, len(out)) == (0, 9)
    assert (h.health, h.temperature, h.error_threshold_status, h.warning_threshold_status, h.nvm_lifetime) == (
        0, 23, 0, 0, 100)


def test_msft_health_reads_the_shared_model() -> None:
    d = dispatcher()
    health = dimm(d, MSFT).health
    health.health, health.life_used, health.media_temperature = HEALTH_CRITICAL, 30, encode_temperature(88)
    h = MsftHealth.parse(call(d, MSFT, 11)[1])
    assert (h.health, h.nvm_lifetime, h.temperature) == (1, 70, 88)


def test_msft_fatal_reads_as_no_lifetime_left() -> None:
    d = dispatcher()
    dimm(d, MSFT).health.injected_fatal = True
    assert MsftHealth.parse(call(d, MSFT, 11)[1]).nvm_lifetime == 0


def test_msft_non_critical_reads_as_a_warning_threshold() -> None:
    d = dispatcher()
    dimm(d, MSFT).health.health = HEALTH_NON_CRITICAL
    assert MsftHealth.parse(call(d, MSFT, 11)[1]).warning_threshold_status != 0


def test_msft_temperature_below_zero_reads_zero() -> None:
    d = dispatcher()
    dimm(d, MSFT).health.media_temperature = encode_temperature(-5)
    assert MsftHealth.parse(call(d, MSFT, 11)[1]).temperature == 0


def test_msft_health_with_input_is_invalid() -> None:
    assert call(dispatcher(), MSFT, 11, b"\0")[0] == Status.INVALID_INPUT


# Hyper-V functions 1 and 2.


@pytest.mark.parametrize("health, bits", [
    (0, 0), (HEALTH_NON_CRITICAL, 1 << 3), (HEALTH_CRITICAL, 1 << 0), (HEALTH_FATAL, 1 << 2),
])
def test_hyperv_health_bits(health: int, bits: int) -> None:
    d = dispatcher()
    dimm(d, HYPERV).health.health = health
    assert call(d, HYPERV, 1) == (0, Int32ul.build(bits))


def test_hyperv_shutdown_info_is_the_dirty_shutdown_count() -> None:
    d = dispatcher()
    dimm(d, HYPERV).health.dirty_shutdown()
    dimm(d, HYPERV).health.dirty_shutdown()
    assert call(d, HYPERV, 2) == (0, Int32ul.build(2))


def test_hyperv_health_with_input_is_invalid() -> None:
    assert call(dispatcher(), HYPERV, 1, b"\0")[0] == Status.INVALID_INPUT


# HPE1 function 1.


def test_hpe1_smart_is_124_bytes_of_the_shared_model() -> None:
    d = dispatcher()
    health = dimm(d, HPE1).health
    health.spares, health.life_used = 42, 7
    health.dirty_shutdown()
    status, out = call(d, HPE1, 1, Int32ul.build(0x23F))
    s = Hpe1Smart.parse(out)
    assert (status, len(out)) == (0, 124)
    assert (s.out_valid_flags, s.stat_summary, s.curr_temp, s.spare_blocks, s.device_life, s.last_shutdown_stat) == (
        0x3F, 0, 23 * 16, 42, 7, 0)


def test_hpe1_clean_shutdown_reads_last_save_good() -> None:
    assert Hpe1Smart.parse(call(dispatcher(), HPE1, 1, Int32ul.build(0))[1]).last_shutdown_stat == 1 << 1


def test_hpe1_smart_without_its_valid_flags_input_is_invalid() -> None:
    assert call(dispatcher(), HPE1, 1)[0] == Status.INVALID_INPUT
