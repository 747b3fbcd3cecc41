"""The architecture's import rules (ARCHITECTURE.md), checked on the source of every module."""

from __future__ import annotations

import pytest

from tests.harness.imports import ROOT, imported_modules, imports_of, module_name, package_modules, within

# Production: the daemon and everything it is built from. None of it may reach the simulator.
PRODUCTION = ["pmemd.daemon", "pmemd.dsm", "pmemd.ioreq", "pmemd.storage", "pmemd.xenstore", "pmemd.xenstored",
              "pmemd.qmp", "pmemd.xen", "pmemd.process", "pmemd.config", "pmemd.toolstack", "pmemd.host_pmem", "acpi"]

# The simulator stands in for Xen: its hypervisor, xenstored use and hvmloader are written from
# Xen's headers and behaviour, so of pmemd they may use only the wire protocols they speak.
SIM_STANDS_IN_FOR_XEN = ["pmemd.sim.errors", "pmemd.sim.hypervisor", "pmemd.sim.hv_domain", "pmemd.sim.hv_emulate",
                         "pmemd.sim.hv_evtchn", "pmemd.sim.hv_physmap", "pmemd.sim.hv_platform", "pmemd.sim.hv_pmem",
                         "pmemd.sim.hv_ranges", "pmemd.sim.hv_ssdt", "pmemd.sim.hvmloader", "pmemd.sim.ioreq",
                         "pmemd.sim.wire", "pmemd.sim.platform_page", "pmemd.xenstored"]
# The rest of pmemd.sim is not Xen: the client bridges to the daemon's interface, the scripted guest
# runs the daemon's AML as a guest would, and the demo runs both worlds side by side.
SIM_NOT_XEN = ["pmemd.sim.client", "pmemd.sim.guest_driver", "pmemd.sim.demo"]
SIM_MAY_USE = ["pmemd.sim", "pmemd.xenstored", "pmemd.xenstore.wire", "pmemd.xenstore.errors", "pmemd.host_pmem",
               "pmemd.xen.page"]
# Records of the host both worlds describe (its pmem, Xen's page size): they may import nothing of
# ours but each other, so that the simulator using them takes no daemon rule with them.
SHARED_FACTS = ["pmemd.host_pmem", "pmemd.xen.page"]


def sources(packages: list[str]) -> list[tuple[str, set[str]]]:
    return [(str(path.relative_to(ROOT)), imports_of(path)) for package in packages
            for path in package_modules(package) if path.exists()]


def offending(imports: set[str], forbidden: str) -> list[str]:
    return sorted(name for name in imports if within(name, forbidden))


@pytest.mark.parametrize(("path", "imports"), sources(PRODUCTION), ids=lambda v: v if isinstance(v, str) else "")
def test_production_never_imports_the_simulator(path: str, imports: set[str]) -> None:
    found = offending(imports, "pmemd.sim")
    assert found == [], f"{path} is production and imports the simulator: {found}"


@pytest.mark.parametrize(("path", "imports"), sources(["acpi"]), ids=lambda v: v if isinstance(v, str) else "")
def test_acpi_imports_neither_trio_nor_pmemd(path: str, imports: set[str]) -> None:
    assert offending(imports, "trio") + offending(imports, "pmemd") == []


@pytest.mark.parametrize(("path", "imports"), sources(["pmemd.dsm"]), ids=lambda v: v if isinstance(v, str) else "")
def test_dsm_handlers_stay_pure(path: str, imports: set[str]) -> None:
    assert offending(imports, "trio") + offending(imports, "pmemd.daemon") + offending(imports, "os") == []


def daemon_rules(imports: set[str]) -> list[str]:
    """What of ours a module standing in for Xen imports beyond SIM_MAY_USE."""
    return sorted(name for name in imports
                  if (within(name, "pmemd") or within(name, "acpi"))
                  and not any(within(name, allowed) for allowed in SIM_MAY_USE))


@pytest.mark.parametrize(("path", "imports"), sources(SIM_STANDS_IN_FOR_XEN),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_the_simulator_imports_no_daemon_rules(path: str, imports: set[str]) -> None:
    found = daemon_rules(imports)
    assert found == [], f"{path} stands in for Xen and imports the daemon's {found}; write Xen's rule in pmemd/sim"


def test_every_simulator_module_is_checked_as_xen_or_named_as_not_xen() -> None:
    found = {module_name(path) for path in package_modules("pmemd.sim")} - {"pmemd.sim"}
    unclassified = {name for name in found
                    if name not in SIM_STANDS_IN_FOR_XEN and not any(within(name, other) for other in SIM_NOT_XEN)}
    missing = {name for name in SIM_STANDS_IN_FOR_XEN if within(name, "pmemd.sim") and name not in found}
    assert (unclassified, missing) == (set(), set())


def test_the_simulator_package_itself_imports_no_daemon_rules() -> None:
    assert daemon_rules(imports_of(ROOT / "pmemd" / "sim" / "__init__.py")) == []


@pytest.mark.parametrize(("path", "imports"), sources(SHARED_FACTS), ids=lambda v: v if isinstance(v, str) else "")
def test_shared_host_records_import_nothing_of_ours(path: str, imports: set[str]) -> None:
    others = [name for name in offending(imports, "pmemd") if not any(within(name, fact) for fact in SHARED_FACTS)]
    assert others + offending(imports, "acpi") == []


def test_the_checker_sees_a_simulator_import_in_a_function() -> None:
    source = "def connect():\n    from pmemd.sim.client import device_model\n"
    assert offending(imported_modules(source, "pmemd.daemon.steps"), "pmemd.sim") == [
        "pmemd.sim.client", "pmemd.sim.client.device_model"]


def test_the_checker_resolves_relative_imports_into_the_simulator() -> None:
    source = "from ..sim import hypervisor\n"
    assert "pmemd.sim.hypervisor" in imported_modules(source, "pmemd.daemon.steps")


# The checker itself, on synthetic modules: each rule above must be able to fail.

def test_the_checker_sees_a_daemon_rule_imported_by_the_simulator() -> None:
    imports = imported_modules("from pmemd.ioreq.machine import execute\n", "pmemd.sim.hv_domain")
    assert daemon_rules(imports) == ["pmemd.ioreq.machine", "pmemd.ioreq.machine.execute"]


def test_the_checker_sees_a_relative_import_of_daemon_rules_inside_a_function() -> None:
    source = "def load():\n    from ..daemon import dmacpi\n    import acpi.table\n"
    assert daemon_rules(imported_modules(source, "pmemd.sim.hvmloader")) == [
        "acpi.table", "pmemd.daemon", "pmemd.daemon.dmacpi"]


def test_the_checker_lets_the_simulator_use_its_own_modules_the_wire_protocols_and_host_records() -> None:
    source = ("from . import wire\nfrom .errors import XenError\nfrom pmemd.xenstore.wire import Message\n"
              "from pmemd.xenstored.store import Store\nfrom pmemd.host_pmem import HostPmemRegion\nimport trio\n")
    assert daemon_rules(imported_modules(source, "pmemd.sim.hv_domain")) == []


def test_test_modules_import_shared_code_only_from_the_harness() -> None:
    """Code two test files share lives in tests/harness/, never in one of them (or a conftest)."""
    found = {str(path.relative_to(ROOT)): sorted(name for name in imports_of(path)
                                                 if within(name, "tests") and not within(name, "tests.harness"))
             for path in sorted((ROOT / "tests").rglob("*.py"))}
    assert {path: names for path, names in found.items() if names} == {}
