"""Run ACPICA's iasl on our tables, so they are judged by a decoder that is not ours.

`decompile` disassembles a table (AML or a data table such as the NFIT) and fails on
anything iasl complains about, in its output or in the .dsl it writes; `compile_asl`
compiles ASL or data-table source; `parse_data_table` turns a data table's .dsl into
records; `require_acpica` skips a test when the tools are not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

TOOLS = ("iasl", "acpiexec")

# iasl reports problems in its output ("Firmware Warning (ACPI): ...", "Error 6126 - ...")
# and, for data tables, inside the .dsl ("**** Unknown NFIT subtable type",
# "Invalid zero length subtable", "/* Incorrect checksum, should be .. */").
# AML disassembly annotates UUIDs it does not know ("/* Unknown UUID */"): not a problem,
# so AML is held only to the "****" markers and the checksum note.
_OUTPUT_PROBLEM = re.compile(r"\b(errors?|warnings?)\b", re.IGNORECASE)
_DATA_TABLE_PROBLEM = re.compile(r"\*\*\*\*|Incorrect|Invalid|Unknown|terminates early|Error|Warning", re.IGNORECASE)
_AML_PROBLEM = re.compile(r"\*\*\*\*|Incorrect checksum|AE_[A-Z_]+")
_DATA_TABLE_BANNER = "ACPI Data Table ["
_SUMMARY = re.compile(r"(\d+) Errors?, (\d+) Warnings?")


class AcpicaError(AssertionError):
    """iasl failed, or reported an error or a warning; the message carries its output."""


def require_acpica() -> None:
    """Skip the calling test when iasl or acpiexec is not installed."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"acpica-tools not installed (missing: {', '.join(missing)}); apt-get install acpica-tools")


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AcpicaError(f"{' '.join(args)} exited {proc.returncode}:\n{output}")
    return output


def decompile(blob: bytes, tmp_path: Path, name: str = "table") -> str:
    """Disassemble `blob` with `iasl -d` and return the .dsl text.

    Raises AcpicaError with iasl's output when iasl fails or reports any error or
    warning, in its output or in the decoded text.
    """
    require_acpica()
    source = tmp_path / f"{name}.dat"
    dsl = tmp_path / f"{name}.dsl"
    source.write_bytes(blob)
    dsl.unlink(missing_ok=True)
    output = _run(["iasl", "-d", source.name], tmp_path)
    if _OUTPUT_PROBLEM.search(output):
        raise AcpicaError(f"iasl -d reported a problem:\n{output}")
    if not dsl.exists():
        raise AcpicaError(f"iasl -d wrote no {dsl.name}:\n{output}")
    text = dsl.read_text()
    pattern = _DATA_TABLE_PROBLEM if _DATA_TABLE_BANNER in text else _AML_PROBLEM
    problems = [line for line in _body_lines(text) if pattern.search(line)]
    if problems:
        raise AcpicaError("iasl -d flagged the table:\n" + "\n".join(problems) + f"\n\n{output}")
    return text


def _body_lines(dsl: str) -> list[str]:
    """The .dsl without its leading banner comment (which names the disassembler)."""
    lines = dsl.splitlines()
    if lines and lines[0].startswith("/*"):
        end = next((i for i, line in enumerate(lines) if line.strip().endswith("*/")), 0)
        banner = lines[: end + 1]
        # A checksum complaint lives in the AML banner ("**** Incorrect checksum"): keep it.
        return [line for line in banner if "Incorrect" in line] + lines[end + 1 :]
    return lines


def compile_asl(text: str, tmp_path: Path, name: str = "source") -> bytes:
    """Compile ASL (or data-table source) with iasl; raises AcpicaError on any error or warning."""
    require_acpica()
    source = tmp_path / f"{name}.asl"
    output_aml = tmp_path / f"{name}.aml"
    source.write_text(text)
    output_aml.unlink(missing_ok=True)
    output = _run(["iasl", "-p", name, source.name], tmp_path)
    summary = _SUMMARY.search(output)
    if summary is None or summary.groups() != ("0", "0"):
        raise AcpicaError(f"iasl did not compile {source.name} cleanly:\n{output}")
    return output_aml.read_bytes()


@dataclass(frozen=True)
class Field:
    """One "[offset decimal length] Name : value" line of a disassembled data table."""

    offset: int
    length: int
    name: str
    value: str

    @property
    def int(self) -> int:
        """The value as a number (iasl prints integers in hex without a prefix)."""
        return int(self.value.split()[0], 16)


_FIELD = re.compile(r"^\[([0-9A-F]+)h (\d+) +(\d+)\]\s+(.+?) : (.*)$")
_DECODED_BIT = re.compile(r"^\s{8,}(\S.*?) : (\d+)$")


def parse_data_table(dsl: str) -> tuple[list[Field], list[list[Field]]]:
    """Split a data table's .dsl into its header fields and one record per subtable.

    A subtable starts at each "Subtable Type" line. Flag bits iasl decodes below a
    flags field ("Device not armed : 1") become fields of length 0 at its offset.
    """
    header: list[Field] = []
    subtables: list[list[Field]] = []
    last: Field | None = None
    for line in dsl.splitlines():
        if line.startswith("Raw Table Data"):
            break
        m = _FIELD.match(line)
        if m:
            last = Field(int(m.group(1), 16), int(m.group(3)), m.group(4).strip(), m.group(5).strip())
            if last.name == "Subtable Type":
                subtables.append([])
            (subtables[-1] if subtables else header).append(last)
            continue
        bit = _DECODED_BIT.match(line)
        if bit and last is not None:
            decoded = Field(last.offset, 0, bit.group(1).strip(), bit.group(2))
            (subtables[-1] if subtables else header).append(decoded)
    return header, subtables


def fields(record: list[Field]) -> dict[str, Field]:
    """A record's fields by name (the first of each name: the reserved fields repeat)."""
    out: dict[str, Field] = {}
    for f in record:
        out.setdefault(f.name, f)
    return out


__all__ = [
    "AcpicaError",
    "Field",
    "compile_asl",
    "decompile",
    "fields",
    "parse_data_table",
    "require_acpica",
]
