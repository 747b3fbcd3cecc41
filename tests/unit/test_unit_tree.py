"""What makes a test a unit test here: it runs in this process, starting no process, server or socket.

Checked on the source of every module under tests/unit (and the harness modules they import), so a
test that needs a process, the simulator, xenstored or an outside tool lands in tests/integration.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.harness.imports import ROOT, imported_modules, imports_of, module_name, within

UNIT = ROOT / "tests" / "unit"
# Modules that start processes or talk over sockets, and the calls that start servers in-process.
PROCESS_MODULES = ["subprocess", "multiprocessing", "socket", "pty", "trio.socket"]
STARTERS = {"run_process", "open_process", "Popen", "fork", "system", "serve_hypervisor", "serve_xenstored",
            "serve_guest", "serve_qmp", "open_client"}


def unit_modules() -> list[Path]:
    return sorted(UNIT.rglob("*.py"))


def reached(path: Path, seen: set[Path] | None = None) -> set[Path]:
    """`path` and the tests.* modules it imports, transitively."""
    seen = set() if seen is None else seen
    seen.add(path)
    for name in imports_of(path):
        if within(name, "tests"):
            target = ROOT.joinpath(*name.split(".")).with_suffix(".py")
            if target.exists() and target not in seen:
                reached(target, seen)
    return seen


def process_uses(source: str, module: str) -> list[str]:
    """The process and socket modules `source` imports and the starters it names."""
    found = [name for name in imported_modules(source, module) if any(within(name, m) for m in PROCESS_MODULES)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.alias):
            name = node.name.rpartition(".")[2]
        else:
            continue
        if name in STARTERS:
            found.append(name)
    return sorted(set(found))


@pytest.mark.parametrize("path", unit_modules(), ids=lambda p: str(p.relative_to(UNIT)))
def test_unit_tests_start_no_process_server_or_socket(path: Path) -> None:
    uses = {str(m.relative_to(ROOT)): process_uses(m.read_text(), module_name(m)) for m in reached(path)}
    assert {module: names for module, names in uses.items() if names} == {}


def test_the_check_sees_a_process_started_through_trio() -> None:
    source = "import trio\n\nasync def test_x():\n    await trio.run_process(['true'])\n"
    assert process_uses(source, "tests.unit.test_x") == ["run_process"]


def test_the_check_sees_a_subprocess_import_in_a_function() -> None:
    assert process_uses("def test_x():\n    import subprocess\n", "tests.unit.test_x") == ["subprocess"]


def test_the_check_sees_the_simulator_served_in_process() -> None:
    source = "from pmemd.sim.hypervisor import serve_hypervisor\n"
    assert process_uses(source, "tests.unit.test_x") == ["serve_hypervisor"]
