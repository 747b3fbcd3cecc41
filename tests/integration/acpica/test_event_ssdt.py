"""The event SSDT: GPE 4 routed to NVDR.NEVT, checked by ACPICA.

It is its own table (published as dm-acpi type 0 beside the NFIT) so a platform that already
owns `_E04` loses only this table. iasl decodes it cleanly; acpiexec, with the NVDIMM SSDT
loaded beside it, runs `\\_GPE._E04`, which reads the event register through NEVT.
"""

from __future__ import annotations

from pathlib import Path

from acpi.events import EVENT_GPE, GPE_HANDLER, build_event_ssdt
from acpi.layout import Dimm, DsmPage
from acpi.ssdt import build_ssdt
from acpi.table import parse_table
from tests.harness.acpica import AcpiExec, decompile

PAGE = DsmPage(address=0xFBFFF000, notify_port=0x0A18)


def test_event_ssdt_is_a_valid_table_named_for_its_job() -> None:
    header = parse_table(build_event_ssdt()).header
    assert (header.signature, header.revision, header.oem_table_id) == ("SSDT", 2, "NVEVENTS")


def test_event_ssdt_handles_the_nvdimm_gpe(tmp_path: Path) -> None:
    dsl = decompile(build_event_ssdt(), tmp_path, "nvev")
    assert GPE_HANDLER == f"_E{EVENT_GPE:02X}" == "_E04"
    assert "External (_SB_.NVDR.NEVT, MethodObj)" in dsl
    assert "Method (_E04, 0, NotSerialized)" in dsl
    assert "\\_SB.NVDR.NEVT ()" in dsl


def test_gpe_handler_runs_nevt_which_reads_the_event_register(tmp_path: Path) -> None:
    (tmp_path / "nvev.aml").write_bytes(build_event_ssdt())
    acpi = AcpiExec(build_ssdt([Dimm(0, 0x140000000, 1 << 30)], PAGE), tmp_path, page_base=PAGE.address)
    # acpiexec loads every table given; put the event SSDT after the NVDIMM one.
    out = acpi.output(["evaluate \\_GPE._E04"], tmp_path / "nvev.aml", timeout=60)
    section = out[out.index("Evaluating") :]
    assert "ACPI Error" not in section and "AE_" not in section, section
    # acpiexec's simulated port reads 0: "no event", so NEVT stops after one read.
    assert section.count("Region access on SpaceId 01") == 1
    assert "failed" not in section
