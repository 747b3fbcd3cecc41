"""The NVDIMM SSDT, checked by ACPICA: iasl decodes it cleanly, acpiexec runs every method.

acpiexec's simulated memory echoes what was written, so a DSM call's reply length reads
back as the revision just written; NCAL called directly with a chosen revision therefore
exercises every reply length. Every trace is compared with the DSM page's access plan,
the same plan the simulated guest replays.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from acpi import dsm_buffer as page
from acpi.aml import Device, RawAml, Scope, definition_block_body
from acpi.layout import INTEL_BUS_UUID, INTEL_DIMM_UUID, ROOT_UUID, Dimm, DsmPage
from acpi.ssdt import build_nvdr_body, build_ssdt
from acpi.table import HEADER_SIZE, parse_table
from tests.harness.acpica import AcpiExec, Evaluation, buffer_arg, compile_asl, decompile, package_arg, uuid_arg

PAGE = DsmPage(address=0xFBFFF000, notify_port=0x0A18)
DIMMS = [
    Dimm(slot=0, address=0x140000000, size=1 << 30),
    Dimm(slot=1, address=0x180000000, size=1 << 30, node=1),
    Dimm(slot=10, address=0x1C0000000, size=2 << 20, unarmed=True),
]
NV00 = "\\_SB.NVDR.NV00"
ROOT = "\\_SB.NVDR"


def request_then_head(input_length: int) -> list[page.Access]:
    return [*page.request_accesses(input_length), page.Access("memory", 0, 8, "read")]


@pytest.fixture(scope="module")
def ssdt() -> bytes:
    return build_ssdt(DIMMS, PAGE)


# Callers for arguments too large for acpiexec's command line: BIGW(n) sends an n-byte
# label-write input through NV00's _DSM, BIGR(n) asks NCAL for an n-byte reply.
LARGE_CALLERS = f"""
External (\\_SB.NVDR.NV00._DSM, MethodObj)
External (\\_SB.NVDR.NCAL, MethodObj)
Method (BIGW, 1, Serialized)
{{
    Name (PKG, Package (1) {{ 0 }})
    Store (Buffer (Arg0) {{}}, Index (PKG, 0))
    Return (\\_SB.NVDR.NV00._DSM (ToUUID ("{INTEL_DIMM_UUID}"), 1, 6, PKG))
}}
"""


INTEL = uuid_arg(INTEL_DIMM_UUID)
REPLY_LENGTHS = [4, 5, 8, 9, 16, 17, 45, 1000, 4096]
BAD_REPLY_LENGTHS = [3, 4097]
LABEL_ARGS = {4: b"", 5: bytes(8), 6: bytes(8) + b"\xab" * 27}

# Every call the tests below look at, evaluated in one acpiexec run per integer width
# (each run costs about a second of acpiexec's own start-up and shutdown).
CALLS: dict[str, tuple[str, ...]] = {
    "dimm_fn0": (f"{NV00}._DSM", INTEL, "1", "0", "[ ]"),
    "root_fn0": (f"{ROOT}._DSM", uuid_arg(ROOT_UUID), "1", "0", "[ ]"),
    "intel_bus_fn0": (f"{ROOT}._DSM", uuid_arg(INTEL_BUS_UUID), "1", "0", "[ ]"),
    "intel_uuid_on_root": (f"{ROOT}._DSM", INTEL, "1", "0", "[ ]"),
    **{f"label_fn{f}": (f"{NV00}._DSM", INTEL, "1", str(f), package_arg(a)) for f, a in LABEL_ARGS.items()},
    "largest_write": ("\\BIGW", str(page.MAX_INPUT)),
    "oversized_write": ("\\BIGW", str(page.MAX_INPUT + 1)),
    "wrong_uuid_fn0": (f"{NV00}._DSM", uuid_arg(ROOT_UUID), "1", "0", "[ ]"),
    "wrong_uuid_fn5": (f"{NV00}._DSM", uuid_arg(ROOT_UUID), "1", "5", "[ ]"),
    "integer_uuid": (f"{NV00}._DSM", "5", "1", "3", "[ ]"),
    "wrong_revision": (f"{NV00}._DSM", INTEL, "7", "1", "[ ]"),
    "unanswered_handle_11": ("\\_SB.NVDR.NV0A._DSM", INTEL, "1", "0", "[ ]"),
    **{f"reply_{n}": (f"{ROOT}.NCAL", str(n), "7", buffer_arg(bytes(19)), "0x11223344") for n in REPLY_LENGTHS},
    **{f"bad_reply_{n}": (f"{ROOT}.NCAL", str(n), "0", "(00)", "1") for n in BAD_REPLY_LENGTHS},
    "label_read_4k": (f"{ROOT}.NCAL", str(page.PAGE_SIZE), "5", buffer_arg(bytes(8)), "1"),
    "lsi": (f"{NV00}._LSI",),
    "lsr": (f"{NV00}._LSR", "0x100", "0x80"),
    "lsw": (f"{NV00}._LSW", "0", "16", buffer_arg(bytes(range(16)))),
}


class Results:
    def __init__(self, evaluations: dict[str, Evaluation]) -> None:
        self.evaluations = evaluations

    def __getitem__(self, name: str) -> Evaluation:
        return self.evaluations[name]

    def accesses(self, name: str) -> list[page.Access]:
        return self.evaluations[name].relative_to(PAGE.address)


@pytest.fixture(scope="module", params=[2, 1], ids=["64-bit", "32-bit"])
def results(request, ssdt: bytes, tmp_path_factory) -> Results:
    acpi = AcpiExec(
        ssdt, tmp_path_factory.mktemp("acpiexec"), page_base=PAGE.address,
        dsdt_revision=request.param, dsdt_body=LARGE_CALLERS,
    )
    return Results(dict(zip(CALLS, acpi.evaluate_many(list(CALLS.values())))))


def test_ssdt_header_describes_the_table(ssdt: bytes) -> None:
    table = parse_table(ssdt)
    assert table.header.signature == "SSDT"
    assert table.header.revision == 2
    assert table.header.oem_table_id == "NVDIMM"


def test_iasl_decodes_ssdt_without_errors_or_warnings(ssdt: bytes, tmp_path: Path) -> None:
    dsl = decompile(ssdt, tmp_path)
    assert 'Name (_HID, "ACPI0012"' in dsl
    for name in ("NV00", "NV01", "NV0A"):
        assert f"Device ({name})" in dsl
    assert dsl.count("Method (_DSM, 4") == 4
    assert dsl.count("Method (_LSI, 0, Serialized)") == 3


def test_disassembled_ssdt_recompiles_cleanly(ssdt: bytes, tmp_path: Path) -> None:
    dsl = decompile(ssdt, tmp_path)
    recompiled = compile_asl(dsl, tmp_path, "re")  # fails unless iasl reports 0 errors, 0 warnings
    # iasl folds `Local2 = (a >> b)` into the operator's target, so the bytes may differ;
    # the program may not: disassembling the recompiled table gives the same ASL.
    again = decompile(recompiled, tmp_path)
    assert _body(again) == _body(dsl)


def test_a_dimm_without_a_label_area_has_no_label_methods(tmp_path: Path) -> None:
    # Found by the lab guest: a label-less MSFT DIMM with _LSI failed its probe (-EIO, "disabled").
    dimms = [Dimm(slot=0, address=0x140000000, size=1 << 30, labels=False), DIMMS[1]]
    dsl = decompile(build_ssdt(dimms, PAGE), tmp_path)
    assert dsl.count("Method (_DSM, 4") == 3
    assert dsl.count("Method (_LSI, 0, Serialized)") == 1
    assert "Method (_LSI" not in dsl[dsl.index("Device (NV00)"):dsl.index("Device (NV01)")]


def _body(dsl: str) -> str:
    return dsl[dsl.index("DefinitionBlock") :]


def test_nvdr_body_is_what_hvmloader_wraps_into_the_ssdt(ssdt: bytes) -> None:
    body = build_nvdr_body(DIMMS, PAGE)
    wrapped = definition_block_body(Scope("\\_SB_", Device("NVDR", RawAml(body))))
    assert wrapped == ssdt[HEADER_SIZE:]


def test_dimm_function_0_costs_four_accesses(results: Results) -> None:
    assert results.accesses("dimm_fn0") == request_then_head(0)
    assert len(results.accesses("dimm_fn0")) <= 8


def test_root_function_0_reaches_the_device_model(results: Results) -> None:
    assert results.accesses("root_fn0") == request_then_head(0)


def test_root_intel_bus_family_reaches_the_device_model(results: Results) -> None:
    assert results.accesses("intel_bus_fn0") == request_then_head(0)


def test_root_answers_a_dimm_family_uuid_without_trapping(results: Results) -> None:
    assert results.accesses("intel_uuid_on_root") == []
    assert results["intel_uuid_on_root"].buffer() == b"\x00"


@pytest.mark.parametrize("function", sorted(LABEL_ARGS))
def test_dimm_label_functions_write_exactly_their_input(results: Results, function: int) -> None:
    assert results.accesses(f"label_fn{function}") == request_then_head(len(LABEL_ARGS[function]))


def test_largest_label_write_costs_one_access_per_qword(results: Results) -> None:
    assert results.accesses("largest_write") == request_then_head(page.MAX_INPUT)
    assert len(results.accesses("largest_write")) == 2 + page.MAX_INPUT // 8 + 1 + 1


def test_input_larger_than_the_page_is_refused_without_trapping(results: Results) -> None:
    assert results.accesses("oversized_write") == []
    assert results["oversized_write"].buffer() == page.STATUS_INVALID_INPUT.to_bytes(4, "little")


def test_wrong_uuid_function_0_reports_no_functions_without_trapping(results: Results) -> None:
    assert results.accesses("wrong_uuid_fn0") == []
    assert results["wrong_uuid_fn0"].buffer() == b"\x00"


def test_wrong_uuid_function_is_not_supported_without_trapping(results: Results) -> None:
    assert results.accesses("wrong_uuid_fn5") == []
    assert results["wrong_uuid_fn5"].buffer() == page.STATUS_NOT_SUPPORTED.to_bytes(4, "little")


def test_uuid_that_is_not_a_buffer_is_answered_without_trapping(results: Results) -> None:
    assert results.accesses("integer_uuid") == []
    assert results["integer_uuid"].buffer() == page.STATUS_NOT_SUPPORTED.to_bytes(4, "little")


def test_wrong_revision_goes_to_the_device_model(results: Results) -> None:
    assert results.accesses("wrong_revision") == request_then_head(0)


def test_reply_length_below_four_yields_hardware_error(results: Results) -> None:
    # acpiexec echoes the header: the reply length reads back as the revision (1).
    assert results["dimm_fn0"].buffer() == page.STATUS_HARDWARE_ERROR.to_bytes(4, "little")


def test_a_call_nobody_answers_ends_with_hardware_error_whatever_the_handle(results: Results) -> None:
    # A dead device model leaves the request in the page (ram mode), as acpiexec echoes it: the
    # reply head is the request's first QWORD, whose low word must never pass for a length.
    assert results["unanswered_handle_11"].buffer() == page.STATUS_HARDWARE_ERROR.to_bytes(4, "little")


@pytest.mark.parametrize("reply_length", REPLY_LENGTHS)
def test_reply_is_read_with_exactly_the_accesses_it_needs(results: Results, reply_length: int) -> None:
    name = f"reply_{reply_length}"
    assert results.accesses(name) == [*page.request_accesses(19), *page.reply_accesses(reply_length)]
    out = results[name].buffer()
    assert len(out) == reply_length - 4
    assert out[:4] == (0x11223344).to_bytes(4, "little")[: len(out)]


def test_a_4k_label_read_fits_the_trap_budget(results: Results) -> None:
    assert len(results.accesses("label_read_4k")) <= 4 + 2 + 512 + 2


@pytest.mark.parametrize("reply_length", BAD_REPLY_LENGTHS)
def test_reply_length_out_of_bounds_stops_after_the_head(results: Results, reply_length: int) -> None:
    name = f"bad_reply_{reply_length}"
    assert results.accesses(name) == [*page.request_accesses(1), page.Access("memory", 0, 8, "read")]
    assert results[name].buffer() == page.STATUS_HARDWARE_ERROR.to_bytes(4, "little")


def test_lsi_returns_a_status_package_when_the_reply_has_no_payload(results: Results) -> None:
    assert results.accesses("lsi") == request_then_head(0)
    assert results["lsi"].integers() == [page.STATUS_HARDWARE_ERROR, 0, 0]


def test_lsr_sends_offset_and_length_and_returns_a_status_package(results: Results) -> None:
    assert results.accesses("lsr") == request_then_head(8)
    assert results["lsr"].integers() == [page.STATUS_HARDWARE_ERROR]
    assert "[Buffer] Length 00" in results["lsr"].result


def test_lsw_sends_offset_length_and_data_and_returns_a_status(results: Results) -> None:
    assert results.accesses("lsw") == request_then_head(8 + 16)
    assert results["lsw"].integers() == [page.STATUS_HARDWARE_ERROR]
