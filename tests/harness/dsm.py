"""A guest's view of the NFIT root and DIMM _DSM functions, driven through `Dispatcher.dispatch`.

`guest()` builds two 64 MiB DIMMs behind a dispatcher whose scrub clock is a fake the test
advances, so "scrubbing takes time" is checked without sleeping; `Guest.call` encodes a
request page and decodes the reply, as the guest's AML would see it. The input builders and
`scrub_to_completion` (Linux's ARS loop) are shared by the ARS, health, inject and poison tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from construct import Int32ul, Int64ul

from pmemd.config import Config, from_mapping
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.call import Status
from pmemd.dsm.devices import Root
from pmemd.dsm.dispatcher import Dispatcher
from pmemd.dsm.media import MediaErrors
from pmemd.dsm.page import decode_reply, encode_request
from pmemd.dsm.root_layouts import ARS_STATUS_BUSY, ARS_STATUS_INTERRUPTED, ArsStartInput, ArsStatusOutput, InjectInput

MiB = 1 << 20
PMEM = 64 * MiB
RATE = 16 * MiB  # bytes/s: a whole DIMM takes 4 s of fake time
ROOT = 0


def two_dimm_config() -> Config:
    """Two 64 MiB DIMMs, placed at 4 GiB and 5 GiB (one SPA range each)."""
    return from_mapping(
        {"domid": 1, "nvdimm": [{"backing": f"nv{i}.img", "size": PMEM} for i in range(2)]},
        base_dir=Path("/nonexistent"),
    )


@dataclass
class FakeClock:
    t: float = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Guest:
    """A dispatcher with its clock and the devices behind it, as a test drives them."""

    dispatcher: Dispatcher
    clock: FakeClock
    config: Config

    @property
    def root(self) -> Root:
        return self.dispatcher.target(ROOT).device

    def spa(self, slot: int = 0) -> tuple[int, int]:
        nvdimm = self.config.nvdimms[slot]
        return nvdimm.address, nvdimm.pmem_size

    def call(self, function: int, data: bytes = b"", *, handle: int = ROOT, revision: int = 1) -> tuple[int, bytes]:
        payload = decode_reply(self.dispatcher.dispatch(encode_request(handle, revision, function, data)))
        return Int32ul.parse(payload[:4]), payload[4:]


def guest(rate: float = RATE) -> Guest:
    config = two_dimm_config()
    clock = FakeClock()
    media = MediaErrors.create(rate=rate, now=clock)
    return Guest(build_dispatcher(config, {}, media=media).dispatcher, clock, config)


def rng(address: int, length: int) -> bytes:
    return Int64ul.build(address) + Int64ul.build(length)


def start_input(address: int, length: int, *, type: int = 2, flags: int = 0) -> bytes:
    return ArsStartInput.build(
        {"range": {"address": address, "length": length}, "type": type, "flags": flags, "reserved": [0] * 5}
    )


def inject_input(address: int, length: int, options: int = 0) -> bytes:
    return InjectInput.build({"range": {"address": address, "length": length}, "options": options})


def start(g: Guest, address: int, length: int, **kw: int) -> tuple[int, bytes]:
    return g.call(2, start_input(address, length, **kw))


def status(g: Guest):
    code, output = g.call(3)
    return code, ArsStatusOutput.parse(output)


def records_of(parsed) -> list[tuple[int, int]]:
    return [(r.err_address, r.length) for r in parsed.records]


def scrub_to_completion(g: Guest, address: int, length: int, *, flags: int = 0) -> list[tuple[int, int]]:
    """Linux's loop: start, poll while busy, restart at restart_address on overflow; all records."""
    found: list[tuple[int, int]] = []
    code, _ = start(g, address, length, flags=flags)
    assert code == Status.SUCCESS
    while True:
        code, parsed = status(g)
        if code == ARS_STATUS_BUSY:
            g.clock.advance(1)
            continue
        found += records_of(parsed)
        if code == Status.SUCCESS:
            return found
        assert code == ARS_STATUS_INTERRUPTED and parsed.header.flags & 1
        code, _ = start(g, parsed.header.restart_address, parsed.header.restart_length)
        assert code == Status.SUCCESS
