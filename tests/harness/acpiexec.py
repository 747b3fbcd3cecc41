"""Run our AML in ACPICA's acpiexec and read back what it did.

`acpiexec -vr` logs every operation-region access the interpreter makes; `evaluate`
prints the returned object. This module turns both into values the tests compare with
the DSM page's access plan (acpi.dsm_buffer), so the AML is checked by an interpreter
that is not ours.
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

_MEMORY_RE = re.compile(r"AcpiExec: SystemMemory (Write|Read) ?: Val \w+ Addr ([0-9A-Fa-f]+) BitWidth ([0-9A-Fa-f]+)")
_IO_RE = re.compile(r"AcpiExec: Region access on SpaceId 01")
_ERROR_RE = re.compile(r"ACPI Error|AE_AML|ACPI Exception|failed with status")

MAX_COMMAND_LINE = 1023  # acpiexec refuses longer -b command lines

TEST_DSDT = """DefinitionBlock ("", "DSDT", {revision}, "PMEMD", "TESTDSDT", 1)
{{
{body}
}}
"""


def require_acpiexec() -> None:
    if shutil.which("acpiexec") is None or shutil.which("iasl") is None:
        pytest.skip("acpica-tools (iasl, acpiexec) not installed; ./dev test installs them")


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
        require_acpiexec()
        self.page_base = page_base
        self.dir = tmp
        (tmp / "dsdt.asl").write_text(TEST_DSDT.format(revision=dsdt_revision, body=dsdt_body))
        proc = subprocess.run(["iasl", "-p", str(tmp / "dsdt"), str(tmp / "dsdt.asl")], capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(f"test DSDT does not compile:\n{proc.stdout}{proc.stderr}")
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

    def _run(self, commands: list[str]) -> list[Evaluation]:
        proc = subprocess.run(
            ["acpiexec", "-vr", "-b", ";".join(commands), str(self.dsdt), str(self.ssdt)],
            capture_output=True, text=True, timeout=120,
        )
        out = proc.stdout + proc.stderr
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
