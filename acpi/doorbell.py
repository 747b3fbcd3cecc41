"""The QEMU notify variant of NCAL: a 1-byte doorbell, a ticket, and a bounded wait.

QEMU 7.2 cannot hand a trapped port write to another process synchronously: its
`isa-debugcon` forwards 1-byte port writes to a socket and lets the vCPU run on. So the
page lives in shared guest RAM and the call completes through memory, in the page after
the DSM page (reserved from Linux with `memmap=8K$<page>`):

  page + 0x1000  u32 ticket  written by the AML: a fresh sequence number per call
  page + 0x1004  u32 done    written by the device model: the ticket it has answered

NCAL writes the request, stores the next ticket, rings (one byte to the notify port),
then waits until `done` equals the ticket: short Stall()s first (a reply usually takes
well under a millisecond), then Sleep(1)s, for at most `timeout_ms` measured with Timer
(100 ns ticks; the elapsed time is taken modulo 2**32 so 32-bit AML integers work).
On timeout the call answers a status-only buffer with status 4 (hardware error). A
ticket, not a flag, so a late answer to a timed-out call cannot complete a newer one.

Everything else in the SSDT is the Xen variant's, byte for byte (`acpi.ssdt`).
"""

from __future__ import annotations

from dataclasses import dataclass

from acpi import dsm_buffer as page
from acpi.aml import (
    BYTE_ACC,
    DWORD_ACC,
    EXT_OP_PREFIX,
    PRESERVE,
    SYSTEM_IO,
    SYSTEM_MEMORY,
    WRITE_AS_ZEROS,
    Add,
    And,
    Buffer,
    Else,
    Field,
    FieldUnit,
    If,
    LGreater,
    LLess,
    LNotEqual,
    Local,
    Name,
    OperationRegion,
    Path,
    Return,
    Store,
    Subtract,
    Term,
    TermLike,
    While,
    encode_term,
)
from acpi.layout import DsmPage

# Where the completion words sit, relative to the DSM page.
COMPLETION_OFFSET = page.PAGE_SIZE
TICKET_OFFSET = COMPLETION_OFFSET + 0
DONE_OFFSET = COMPLETION_OFFSET + 4
RESERVED_SIZE = 2 * page.PAGE_SIZE  # what the guest kernel must keep for itself (memmap=)

DOORBELL_WIDTH = 1  # isa-debugcon drops anything but 1-byte writes
DOORBELL_VALUE = 1

SPIN_ROUNDS = 100  # Stall()s before falling back to Sleep(1)
SPIN_STALL_US = 10
TIMER_TICKS_PER_MS = 10_000  # Timer counts 100 ns

# AML names of the doorbell objects (in Device(NVDR), beside NCAL).
REGION_BELL = "NDBL"
FIELD_BELL = "NBEL"
REGION_DONE = "NDON"
FIELD_TICKET = "NTKT"
FIELD_DONE = "NACK"
NAME_SEQUENCE = "NSEQ"

STALL_OP = 0x21
SLEEP_OP = 0x22
TIMER_OP = 0x33


@dataclass(frozen=True)
class Stall(Term):
    """Stall(microseconds): busy-wait (ACPI 6.5 §19.6.130)."""

    microseconds: TermLike

    def encode(self) -> bytes:
        return bytes([EXT_OP_PREFIX, STALL_OP]) + encode_term(self.microseconds)


@dataclass(frozen=True)
class Sleep(Term):
    """Sleep(milliseconds): yield the CPU (ACPI 6.5 §19.6.126)."""

    milliseconds: TermLike

    def encode(self) -> bytes:
        return bytes([EXT_OP_PREFIX, SLEEP_OP]) + encode_term(self.milliseconds)


@dataclass(frozen=True)
class Timer(Term):
    """Timer: a monotonic count of 100 ns ticks (ACPI 6.5 §19.6.138)."""

    def encode(self) -> bytes:
        return bytes([EXT_OP_PREFIX, TIMER_OP])


def doorbell_objects(dsm: DsmPage) -> list[Term]:
    """The doorbell port, the completion words and the ticket counter."""
    return [
        OperationRegion(REGION_BELL, SYSTEM_IO, dsm.notify_port, DOORBELL_WIDTH),
        Field(REGION_BELL, FieldUnit(FIELD_BELL, 8 * DOORBELL_WIDTH), access=BYTE_ACC, update=WRITE_AS_ZEROS),
        OperationRegion(REGION_DONE, SYSTEM_MEMORY, dsm.address + COMPLETION_OFFSET, 8),
        Field(REGION_DONE, FieldUnit(FIELD_TICKET, 32), FieldUnit(FIELD_DONE, 32), access=DWORD_ACC, update=PRESERVE),
        Name(NAME_SEQUENCE, 0),
    ]


def doorbell_ring(dsm: DsmPage, timeout_ms: int) -> list[TermLike]:
    """NCAL's notify step: new ticket, ring, wait for it to come back or time out."""
    sequence, started, spins = Path(NAME_SEQUENCE), Local(7), Local(0)
    elapsed = And(Subtract(Timer(), started), 0xFFFFFFFF)
    return [
        Store(And(Add(sequence, 1), 0xFFFFFFFF), sequence),
        Store(sequence, Path(FIELD_TICKET)),
        Store(DOORBELL_VALUE, Path(FIELD_BELL)),
        Store(Timer(), started),
        Store(0, spins),
        While(
            LNotEqual(Path(FIELD_DONE), sequence),
            If(LGreater(elapsed, timeout_ms * TIMER_TICKS_PER_MS),
               Return(Buffer(page.STATUS_HARDWARE_ERROR.to_bytes(4, "little")))),
            If(LLess(spins, SPIN_ROUNDS), Stall(SPIN_STALL_US), Add(spins, 1, spins)),
            Else(Sleep(1)),
        ),
    ]
