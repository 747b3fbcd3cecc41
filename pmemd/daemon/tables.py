"""The guest's firmware tables, built from its config: NFIT, SSDT, the NVDR body and the
event SSDT that routes the NVDIMM GPE."""

from __future__ import annotations

from dataclasses import dataclass

from acpi.events import build_event_ssdt
from acpi.layout import DIMM_FAMILIES, Dimm, Doorbell, DsmPage
from acpi.nfit import build_nfit
from acpi.ssdt import build_nvdr_body, build_ssdt
from pmemd.config import Config


@dataclass(frozen=True)
class Tables:
    nfit: bytes  # complete table (dm-acpi type 0)
    ssdt: bytes  # complete table, for loaders that take whole tables
    nvdr: bytes  # body of Device(NVDR) (dm-acpi type 1)
    events: bytes = b""  # SSDT routing the NVDIMM event GPE to NVDR.NEVT (dm-acpi type 0); none for QEMU

    @property
    def acpi_firmware(self) -> bytes:
        """NFIT + SSDT back to back: xl's `acpi_firmware=` file on upstream Xen (hvmloader's
        libacpi copies each table of the blob, walked by its header length, into the XSDT)."""
        return self.nfit + self.ssdt

    def files(self) -> dict[str, bytes]:
        """Output file names and contents, as `pmemd acpi` writes them."""
        files = {"NFIT.bin": self.nfit, "SSDT.bin": self.ssdt, "NVDR.bin": self.nvdr,
                 "ACPI.bin": self.acpi_firmware}
        if self.events:
            files["NVEV.bin"] = self.events
        return files


def dimms(config: Config) -> list[Dimm]:
    """The config's NVDIMMs as the tables describe them (guest PMEM only, labels excluded)."""
    return [
        Dimm(
            slot=d.slot,
            address=d.address,
            size=d.pmem_size,
            node=d.node,
            unarmed=d.unarmed,
            serial=d.serial,
            flush_hint=d.flush_hint,
            family=DIMM_FAMILIES[d.family],
            flags=d.memdev_flags,
            labels=d.label_size > 0,
            health_events=can_raise_health_events(config),
        )
        for d in config.nvdimms
    ]


def can_raise_health_events(config: Config) -> bool:
    """Whether the daemon can deliver DIMM Notify 0x81 (health-enabled in the NFIT memdev flags).

    The Xen transport raises them through the event GPE and `NVDR.NEVT`; QEMU's doorbell
    carries no events, so a lab guest's DIMMs say health events are not enabled.
    """
    return config.dsm.transport == "xen"


def dsm_page(config: Config) -> DsmPage:
    doorbell = Doorbell(config.dsm.timeout_ms) if config.dsm.transport == "qemu" else None
    return DsmPage(address=config.dsm.page, notify_port=config.dsm.notify_port, doorbell=doorbell)


def build_tables(config: Config) -> Tables:
    ds, page = dimms(config), dsm_page(config)
    return Tables(
        nfit=build_nfit(ds, config.persistence),
        ssdt=build_ssdt(ds, page),
        nvdr=build_nvdr_body(ds, page),
        # QEMU's doorbell cannot carry events (its NEVT is empty) and QEMU's DSDT owns its GPEs.
        events=build_event_ssdt() if page.doorbell is None else b"",
    )
