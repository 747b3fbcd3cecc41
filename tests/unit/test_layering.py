"""The architecture's import rules (ARCHITECTURE.md), checked on the source of every module."""

from __future__ import annotations

import pytest

from tests.harness.imports import ROOT, imported_modules, imports_of, package_modules, within

# Production: the daemon and everything it is built from. None of it may reach the simulator.
PRODUCTION = ["pmemd.daemon", "pmemd.dsm", "pmemd.ioreq", "pmemd.storage", "pmemd.xenstore", "pmemd.xenstored",
              "pmemd.qmp", "pmemd.xen", "pmemd.process", "pmemd.config", "pmemd.toolstack", "pmemd.host_pmem", "acpi"]

# The simulator stands in for Xen: its hypervisor, xenstored use and hvmloader are written from
# Xen's headers and behaviour, so of pmemd they may use only the wire protocols they speak.
SIM_STANDS_IN_FOR_XEN = ["pmemd.sim.errors", "pmemd.sim.hypervisor", "pmemd.sim.hv_domain", "pmemd.sim.hv_emulate",
                         "pmemd.sim.hv_evtchn", "pmemd.sim.hv_physmap", "pmemd.sim.hv_platform", "pmemd.sim.hv_pmem",
                         "pmemd.sim.hv_ranges", "pmemd.sim.hv_ssdt", "pmemd.sim.hvmloader", "pmemd.sim.ioreq",
                         "pmemd.sim.wire", "pmemd.sim.platform_page", "pmemd.xenstored"]
SIM_MAY_USE = ["pmemd.sim", "pmemd.xenstored", "pmemd.xenstore.wire", "pmemd.xenstore.errors", "pmemd.host_pmem"]
# Records of the host both worlds describe: they may import nothing of ours, so that the simulator
# using them takes no daemon rule with them.
SHARED_FACTS = ["pmemd.host_pmem"]


def sources(packages: list[str]) -> list[tuple[str, set[str]]]:
    return [(str(path.relative_to(ROOT)), imports_of(path)) for package in packages
            for path in package_modules(package) if path.exists()]


def offending(imports: set[str], forbidden: str) -> list[str]:
    return sorted(name for name in imports if within(name, forbidden))


@pytest.mark.parametrize(("path", "imports"), sources(PRODUCTION), ids=lambda v: v if isinstance(v, str) else "")
def test_production_never_imports_the_simulator(path: str, imports: set[str]) -> None:
    assert offending(imports, "pmemd.sim") == []


@pytest.mark.parametrize(("path", "imports"), sources(["acpi"]), ids=lambda v: v if isinstance(v, str) else "")
def test_acpi_imports_neither_trio_nor_pmemd(path: str, imports: set[str]) -> None:
    assert offending(imports, "trio") + offending(imports, "pmemd") == []


@pytest.mark.parametrize(("path", "imports"), sources(["pmemd.dsm"]), ids=lambda v: v if isinstance(v, str) else "")
def test_dsm_handlers_stay_pure(path: str, imports: set[str]) -> None:
    assert offending(imports, "trio") + offending(imports, "pmemd.daemon") + offending(imports, "os") == []


@pytest.mark.parametrize(("path", "imports"), sources(SIM_STANDS_IN_FOR_XEN),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_the_simulator_imports_no_daemon_rules(path: str, imports: set[str]) -> None:
    ours = [name for name in imports if within(name, "pmemd")]
    assert [name for name in ours if not any(within(name, allowed) for allowed in SIM_MAY_USE)] == []


@pytest.mark.parametrize(("path", "imports"), sources(SHARED_FACTS), ids=lambda v: v if isinstance(v, str) else "")
def test_shared_host_records_import_nothing_of_ours(path: str, imports: set[str]) -> None:
    assert offending(imports, "pmemd") + offending(imports, "acpi") == []


def test_the_checker_sees_a_simulator_import_in_a_function() -> None:
    source = "def connect():\n    from pmemd.sim.client import device_model\n"
    assert offending(imported_modules(source, "pmemd.daemon.steps"), "pmemd.sim") == [
        "pmemd.sim.client", "pmemd.sim.client.device_model"]


def test_the_checker_resolves_relative_imports_into_the_simulator() -> None:
    source = "from ..sim import hypervisor\n"
    assert "pmemd.sim.hypervisor" in imported_modules(source, "pmemd.daemon.steps")


def test_the_checker_sees_a_daemon_rule_imported_by_the_simulator() -> None:
    imports = imported_modules("from pmemd.ioreq.machine import execute\n", "pmemd.sim.hv_domain")
    assert sorted(name for name in imports if not any(within(name, allowed) for allowed in SIM_MAY_USE)) == [
        "pmemd.ioreq.machine", "pmemd.ioreq.machine.execute"]
