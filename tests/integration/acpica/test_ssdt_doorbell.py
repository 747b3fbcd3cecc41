"""The SSDT's QEMU notify variant: new AML terms against iasl, the rest of the table untouched.

Only the notify step may differ from the Xen SSDT the real guest would otherwise never
run: the tests diff iasl's disassembly of both and require every changed line to belong
to the notify objects. acpiexec (nothing answers the doorbell there) proves the bounded
wait ends in a status-4 reply instead of an AML fault, at both integer widths.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

from acpi import dsm_buffer as page
from acpi.aml import Local, Method, Store, definition_block_body
from acpi.doorbell import Sleep, Stall, Timer
from acpi.layout import DIMM_FAMILIES, Dimm, Doorbell, DsmPage
from acpi.ssdt import build_ssdt
from tests.harness.acpica import AcpiExec, buffer_arg, compile_aml_body, decompile

XEN = DsmPage(address=0x10000000, notify_port=0x0A18)
QEMU = DsmPage(address=0x10000000, notify_port=0x0A18, doorbell=Doorbell(timeout_ms=4000))
DIMMS = [
    Dimm(slot=0, address=0x100000000, size=254 << 20),
    Dimm(slot=1, address=0x140000000, size=254 << 20, family=DIMM_FAMILIES["hyperv"]),
]
# Objects only the notify step owns, in either variant.
NOTIFY_NAMES = re.compile(r"NPIO|NTFY|NDBL|NBEL|NDON|NTKT|NACK|NSEQ|Timer|Stall|Sleep|Local0|Local7|While|Else")
# Everything else the SSDT declares: none of it may change.
SHARED_NAMES = re.compile(r"HDR0|RHD0|HBUF|HHDL|HREV|HFUN|HLEN|RIN\d|ROU\d|IN\d_|OU\d_|NINP|NSTA|NLSI|NLSR|"
                          r"_DSM|_LS[IRW]|_ADR|_HID|Device|Local[1-6]|Arg\d")


def test_stall_sleep_and_timer_encode_as_iasl_compiles_them(tmp_path: Path) -> None:
    asl = "Method (MTH9, 0) { Stall (0x0A) Sleep (One) Store (Timer, Local0) }"
    terms = Method("MTH9", 0, Stall(10), Sleep(1), Store(Timer(), Local(0)))
    assert definition_block_body(terms) == compile_aml_body(asl, tmp_path)


def disassemble(blob: bytes, tmp: Path, name: str) -> list[str]:
    text = decompile(blob, tmp, name)
    return [line.strip() for line in text[text.index("DefinitionBlock"):].splitlines()[1:] if line.strip()]


def changed_lines(tmp_path: Path) -> tuple[list[str], list[str]]:
    xen = disassemble(build_ssdt(DIMMS, XEN), tmp_path, "xen")
    qemu = disassemble(build_ssdt(DIMMS, QEMU), tmp_path, "qemu")
    diff = list(difflib.unified_diff(xen, qemu, lineterm="", n=0))
    removed = [d[1:] for d in diff if d.startswith("-") and not d.startswith("---")]
    added = [d[1:] for d in diff if d.startswith("+") and not d.startswith("+++")]
    return removed, added


def test_doorbell_variant_changes_only_the_notify_step(tmp_path: Path) -> None:
    removed, added = changed_lines(tmp_path)
    assert [line for line in removed + added if SHARED_NAMES.search(line)] == []
    assert all(NOTIFY_NAMES.search(line) or line in "{}" for line in removed), removed
    assert any("NPIO" in line for line in removed) and any("NDBL" in line for line in added)


def test_doorbell_variant_declares_bell_ticket_and_bound(tmp_path: Path) -> None:
    _, added = changed_lines(tmp_path)
    text = "\n".join(added)
    assert "OperationRegion (NDBL, SystemIO, 0x0A18, One)" in text
    assert "OperationRegion (NDON, SystemMemory, 0x10001000, 0x08)" in text
    assert "0x02625A00" in text  # 4000 ms in Timer's 100 ns ticks


@pytest.mark.parametrize("revision", [2, 1], ids=["64-bit", "32-bit"])
def test_unanswered_doorbell_times_out_with_status_4(revision: int, tmp_path: Path) -> None:
    fast = DsmPage(address=QEMU.address, notify_port=QEMU.notify_port, doorbell=Doorbell(timeout_ms=5))
    acpi = AcpiExec(build_ssdt(DIMMS, fast), tmp_path, page_base=fast.address, dsdt_revision=revision)
    calls = [("\\_SB.NVDR.NCAL", "1", "5", buffer_arg(bytes(8)), "1"), ("\\_SB.NVDR.NV01._LSI",)]
    label_read, lsi = acpi.evaluate_many(calls)
    assert label_read.buffer() == page.STATUS_HARDWARE_ERROR.to_bytes(4, "little")
    assert lsi.integers()[0] == page.STATUS_HARDWARE_ERROR
