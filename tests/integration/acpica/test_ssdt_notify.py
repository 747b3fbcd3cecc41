"""NVDIMM events in the SSDT: NEVT, run by ACPICA, turns register words into Notify(…, 0x81).

acpiexec's SystemIO space echoes the last word written, so a test DSDT posts a word to the
notify register and runs the GPE method the platform's DSDT would (`_E04` → NEVT); NEVT then
reads that word on each of its bounded reads. acpiexec logs every Notify it receives.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from acpi.events import EVENT_GPE, decode_event, encode_event, event_bound
from acpi.layout import Dimm, DsmPage
from acpi.ssdt import build_ssdt
from tests.harness.acpica import AcpiExec, decompile

PAGE = DsmPage(address=0xFBFFF000, notify_port=0x0A18)
DIMMS = [
    Dimm(slot=0, address=0x140000000, size=1 << 30),
    Dimm(slot=10, address=0x180000000, size=1 << 30),
]
BOUND = event_bound(len(DIMMS))

PLATFORM_DSDT = f"""
External (\\_SB.NVDR.NEVT, MethodObj)
External (\\_SB.NVDR.NTFY, FieldUnitObj)
Scope (\\_GPE)
{{
    Method (_E{EVENT_GPE:02X}, 0) {{ \\_SB.NVDR.NEVT () }}
}}
Method (POST, 1) {{ \\_SB.NVDR.NTFY = Arg0 }}
"""

NOTIFY_RE = re.compile(r"Received a \w+ Notify on \[(\w+)\].*Value 0x([0-9A-Fa-f]+)")

WORDS = {
    "root": encode_event(0, 0x81),
    "nv00": encode_event(1, 0x81),
    "nv0a": encode_event(11, 0x81),
    "unknown_handle": encode_event(33, 0x81),
    "empty": 0,
    "unclaimed_port": 0xFFFFFFFF,
}


def notifies(output: str) -> list[tuple[str, int]]:
    return [(m.group(1), int(m.group(2), 16)) for m in NOTIFY_RE.finditer(output)]


@pytest.fixture(scope="module", params=[2, 1], ids=["64-bit", "32-bit"])
def seen(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, int]]]:
    """For each posted word: the notifies acpiexec received while `_E04` ran."""
    aml = AcpiExec(build_ssdt(DIMMS, PAGE), tmp_path_factory.mktemp("acpiexec"), page_base=PAGE.address,
                   dsdt_revision=request.param, dsdt_body=PLATFORM_DSDT)
    calls: list[tuple[str, ...]] = []
    for word in WORDS.values():
        calls += [("\\POST", hex(word)), (f"\\_GPE._E{EVENT_GPE:02X}",)]
    results = aml.evaluate_many(calls)
    return {name: notifies(results[2 * i + 1].output) for i, name in enumerate(WORDS)}


def test_root_event_notifies_nvdr_with_its_value(seen: dict[str, list[tuple[str, int]]]) -> None:
    assert seen["root"] == [("NVDR", 0x81)] * BOUND


def test_dimm_event_notifies_the_dimm_its_handle_names(seen: dict[str, list[tuple[str, int]]]) -> None:
    assert seen["nv00"] == [("NV00", 0x81)] * BOUND
    assert seen["nv0a"] == [("NV0A", 0x81)] * BOUND


def test_event_for_an_unknown_handle_notifies_nobody(seen: dict[str, list[tuple[str, int]]]) -> None:
    assert seen["unknown_handle"] == []


def test_empty_register_and_unclaimed_port_end_the_drain_at_once(seen: dict[str, list[tuple[str, int]]]) -> None:
    assert seen["empty"] == []
    assert seen["unclaimed_port"] == []


def test_nevt_reads_the_notify_register_in_the_disassembly(tmp_path: Path) -> None:
    dsl = decompile(build_ssdt(DIMMS, PAGE), tmp_path)
    assert "Method (NEVT, 0, Serialized)" in dsl
    assert "Local7 = NTFY" in dsl
    assert "Notify (\\_SB.NVDR, (Local7 & 0xFF))" in dsl
    assert "Notify (NV0A, (Local7 & 0xFF))" in dsl


def test_event_words_round_trip_and_zero_or_all_ones_mean_none() -> None:
    assert decode_event(encode_event(11, 0x81)) == (11, 0x81)
    assert decode_event(encode_event(0, 0x81)) == (0, 0x81)
    assert decode_event(0) is None
    assert decode_event(0xFFFFFFFF) is None
    with pytest.raises(ValueError):
        encode_event(1, 0)
