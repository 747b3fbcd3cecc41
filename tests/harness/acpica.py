"""ACPICA's iasl and acpiexec on our tables, so they are judged by tools that are not ours.

`decompile` disassembles a table (AML or a data table such as the NFIT) and fails on
anything iasl complains about, in its output or in the .dsl it writes; `compile_asl`
compiles ASL or data-table source; `parse_data_table` turns a data table's .dsl into
records; `AcpiExec` runs our AML in acpiexec and reads back every operation-region access
it made and the object it returned, for comparison with the DSM page's access plan
(acpi.dsm_buffer); `require_acpica` skips a test when the tools are not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from acpi.dsm_buffer import Access
from acpi.table import HEADER_SIZE

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


def compile_asl(text: str, tmp_path: Path, name: str = "source", *, warnings: bool = False) -> bytes:
    """Compile ASL (or data-table source) with iasl; raises AcpicaError on any error, or any warning
    unless `warnings` (snippets written to pin an encoding may leave locals unused)."""
    require_acpica()
    source = tmp_path / f"{name}.asl"
    output_aml = tmp_path / f"{name}.aml"
    source.write_text(text)
    output_aml.unlink(missing_ok=True)
    output = _run(["iasl", "-p", name, source.name], tmp_path)
    summary = _SUMMARY.search(output)
    if summary is None or summary.group(1) != "0" or (summary.group(2) != "0" and not warnings):
        raise AcpicaError(f"iasl did not compile {source.name} cleanly:\n{output}")
    return output_aml.read_bytes()


def compile_aml_body(body: str, tmp_path: Path) -> bytes:
    """The AML iasl makes of `body` (ASL terms) inside an SSDT, without the table header.

    iasl's warnings are allowed: a snippet pinning one encoding need not be a useful program.
    """
    block = f'DefinitionBlock ("", "SSDT", 2, "PMEMD", "FIXTURE", 1) {{ {body} }}\n'
    return compile_asl(block, tmp_path, "fixture", warnings=True)[HEADER_SIZE:]


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


# -- acpiexec: our AML run by ACPICA's interpreter ----------------------------------------

_MEMORY_RE = re.compile(r"AcpiExec: SystemMemory (Write|Read) ?: Val \w+ Addr ([0-9A-Fa-f]+) BitWidth ([0-9A-Fa-f]+)")
_IO_RE = re.compile(r"AcpiExec: Region access on SpaceId 01")
_ERROR_RE = re.compile(r"ACPI Error|AE_AML|ACPI Exception|failed with status")

MAX_COMMAND_LINE = 1023  # acpiexec refuses longer -b command lines

TEST_DSDT = """DefinitionBlock ("", "DSDT", {revision}, "PMEMD", "TESTDSDT", 1)
{{
{body}
}}
"""


def uuid_arg(value: str | uuid.UUID) -> str:
    """A UUID as acpiexec's buffer argument syntax: (b0 b1 ...) in EFI byte order."""
    return buffer_arg(uuid.UUID(str(value)).bytes_le)


def buffer_arg(data: bytes) -> str:
    """acpiexec's buffer syntax; unspaced, since its command line holds only ~500 characters."""
    if len(data) > 200:
        raise ValueError("acpiexec's command line cannot carry more than ~200 bytes; call from the DSDT")
    return "(" + data.hex() + ")"


def package_arg(*buffers: bytes) -> str:
    """A package of buffers; empty buffers are left out (acpiexec crashes allocating them)."""
    return "[" + " ".join(buffer_arg(b) for b in buffers if b) + " ]"


@dataclass
class Evaluation:
    accesses: list[Access]  # memory offsets are absolute; see `relative_to`
    result: str  # acpiexec's rendering of the returned object
    output: str  # everything it printed

    def relative_to(self, base: int) -> list[Access]:
        """The accesses with memory addresses made relative to `base` (the DSM page)."""
        return [
            Access(a.space, a.offset - base, a.width, a.direction) if a.space == "memory" else a
            for a in self.accesses
        ]

    def buffer(self) -> bytes:
        """The returned object as bytes, when it is a Buffer."""
        return parse_buffer(self.result)

    def integers(self) -> list[int]:
        return [int(v, 16) for v in re.findall(r"\[Integer\] = ([0-9A-Fa-f]+)", self.result)]


def parse_buffer(text: str) -> bytes:
    match = re.search(r"\[Buffer\] Length ([0-9A-Fa-f]+) =(.*)", text, re.S)
    if not match:
        raise AssertionError(f"no buffer in:\n{text}")
    length = int(match.group(1), 16)
    data = bytearray()
    for line in match.group(2).splitlines():
        row = re.match(r"\s*[0-9A-Fa-f]{4}: ((?:[0-9A-Fa-f]{2} )+)", line.strip() + " ")
        if row:
            data += bytes.fromhex(row.group(1))
        if len(data) >= length:
            break
    return bytes(data[:length])


class AcpiExec:
    """An SSDT loaded beside a minimal DSDT of the given revision (integer width)."""

    def __init__(self, ssdt: bytes, tmp: Path, *, page_base: int, dsdt_revision: int = 2, dsdt_body: str = "") -> None:
        """`dsdt_body` is ASL for helper methods, e.g. callers that build large arguments."""
        require_acpica()
        self.page_base = page_base
        self.dir = tmp
        compile_asl(TEST_DSDT.format(revision=dsdt_revision, body=dsdt_body), tmp, "dsdt")
        self.dsdt = tmp / "dsdt.aml"
        self.ssdt = tmp / "ssdt.aml"
        self.ssdt.write_bytes(ssdt)

    def evaluate(self, path: str, *args: str) -> Evaluation:
        """Evaluate one method (one acpiexec run, about a second: prefer `evaluate_many`)."""
        return self.evaluate_many([(path, *args)])[0]

    def evaluate_many(self, calls: list[tuple[str, ...]]) -> list[Evaluation]:
        """Evaluate several methods in as few acpiexec runs as its command line allows."""
        commands = [" ".join(["evaluate", *call]) for call in calls]
        batches: list[list[str]] = [[]]
        for command in commands:
            if len(";".join(batches[-1] + [command])) > MAX_COMMAND_LINE:
                batches.append([])
            batches[-1].append(command)
        return [ev for batch in batches if batch for ev in self._run(batch)]

    def output(self, commands: list[str], *more_tables: Path, timeout: float = 120) -> str:
        """Everything acpiexec prints running `commands` (tables after the SSDT load after it)."""
        proc = subprocess.run(
            ["acpiexec", "-vr", "-b", ";".join(commands), str(self.dsdt), str(self.ssdt), *map(str, more_tables)],
            capture_output=True, text=True, timeout=timeout,
        )
        return proc.stdout + proc.stderr

    def _run(self, commands: list[str]) -> list[Evaluation]:
        out = self.output(commands)
        sections = out.split("\nEvaluating ")[1:]
        if len(sections) != len(commands):
            raise AssertionError(f"expected {len(commands)} evaluations, acpiexec printed:\n{out}")
        return [_evaluation(command, section) for command, section in zip(commands, sections)]


def _evaluation(command: str, section: str) -> Evaluation:
    if _ERROR_RE.search(section):
        raise AssertionError(f"acpiexec reported an error for {command}:\n{section}")
    accesses = []
    for line in section.splitlines():
        m = _MEMORY_RE.search(line)
        if m:
            direction = "write" if m.group(1) == "Write" else "read"
            addr, bits = int(m.group(2), 16), int(m.group(3), 16)
            accesses.append(Access("memory", addr, bits // 8, direction))
        elif _IO_RE.search(line):
            accesses.append(Access("io", 0, 4, "write"))
    result = section[section.find("returned object") :] if "returned object" in section else ""
    return Evaluation(accesses, result, section)
