"""`pmemd acpi`: the console script writes the tables, summarises them, and exits 1 or 2 on errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from acpi.nfit import parse_nfit
from acpi.table import parse_table
from pmemd import config
from pmemd.daemon.tables import build_tables
from tests.harness.daemon import pmemd
from tests.harness.paths import REPO


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("acpi") / "tables"
    return pmemd("acpi", "--config", "configs/multi.toml", "--out", str(out)), out


def test_acpi_exits_0_and_writes_nfit_ssdt_nvdr_and_the_event_ssdt(
    multi_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, out = multi_run
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert sorted(p.name for p in out.iterdir()) == ["ACPI.bin", "NFIT.bin", "NVDR.bin", "NVEV.bin", "SSDT.bin"]


def test_acpi_files_are_the_tables_built_from_the_config(multi_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = multi_run
    tables = build_tables(config.load(REPO / "configs" / "multi.toml"))
    assert {name: (out / name).read_bytes() for name in tables.files()} == tables.files()


def test_acpi_nfit_and_ssdt_are_valid_tables(multi_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = multi_run
    assert len(parse_nfit((out / "NFIT.bin").read_bytes())) == 3 * 3 + 1 + 1
    assert parse_table((out / "SSDT.bin").read_bytes()).header.signature == "SSDT"
    assert (out / "NVDR.bin").read_bytes() in (out / "SSDT.bin").read_bytes()


def test_acpi_prints_a_json_summary_with_lengths_and_checksums(
    multi_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, out = multi_run
    summary = json.loads(proc.stdout)
    assert summary["domid"] == 12
    assert summary["nvdimms"] == 3
    by_name = {Path(t["file"]).name: t for t in summary["tables"]}
    assert set(by_name) == {"NFIT.bin", "SSDT.bin", "NVDR.bin", "NVEV.bin", "ACPI.bin"}
    for name, entry in by_name.items():
        assert Path(entry["file"]) == out / name
        assert entry["length"] == (out / name).stat().st_size
    assert by_name["NFIT.bin"]["checksum_ok"] is True
    assert by_name["ACPI.bin"]["checksum_ok"] is True  # NFIT + SSDT for xl's acpi_firmware=
    assert by_name["SSDT.bin"]["checksum_ok"] is True
    assert by_name["NVEV.bin"]["checksum_ok"] is True
    assert "checksum_ok" not in by_name["NVDR.bin"]  # a body, not a table
    assert by_name["NFIT.bin"]["length"] == 40 + 3 * 184 + 24 + 16


def test_acpi_accepts_an_existing_output_directory(tmp_path: Path) -> None:
    proc = pmemd("acpi", "--config", str(REPO / "configs" / "example.toml"), "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["nvdimms"] == 1


def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text('domid = 3\n[[nvdimm]]\nbacking = "a.img"\nsize = "1G"\n'
                    '[[nvdimm]]\nbacking = "b.img"\nsize = "1G"\nlabel_size = "64K"\n')
    return path


def test_bad_config_exits_1_with_one_line_naming_the_field(tmp_path: Path) -> None:
    proc = pmemd("acpi", "--config", str(bad_config(tmp_path)), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == "pmemd: nvdimm[1].label_size: must be 0 or at least 128 KiB, got 65536\n"


def test_bad_config_writes_no_tables(tmp_path: Path) -> None:
    pmemd("acpi", "--config", str(bad_config(tmp_path)), "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_config_exits_1_naming_the_file(tmp_path: Path) -> None:
    proc = pmemd("acpi", "--config", str(tmp_path / "absent.toml"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"pmemd: config: cannot read {tmp_path / 'absent.toml'}")
    assert proc.stderr.count("\n") == 1


def test_toml_syntax_error_exits_1_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("domid = [\n")
    proc = pmemd("acpi", "--config", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"pmemd: config: {path} is not valid TOML: ")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("acpi",),
        ("acpi", "--config", "configs/multi.toml"),
        ("acpi", "--out", "/tmp/x"),
        ("acpi", "--config", "configs/multi.toml", "--out", "/tmp/x", "--bogus"),
        ("tables",),
    ],
    ids=["no-command", "no-options", "no-out", "no-config", "unknown-option", "unknown-command"],
)
def test_bad_usage_exits_2(args: tuple[str, ...]) -> None:
    proc = pmemd(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "usage: pmemd" in proc.stderr
