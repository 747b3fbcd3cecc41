"""The scripted guest's own rules, apart from any device model's answers."""

from __future__ import annotations

from pathlib import Path

from pmemd.sim.client.control import DomainControl
from tests.harness.config import guest_config, write_toml
from tests.harness.guest_script import run_script_async

DOMID = 4


def write_guest(tmp_path: Path, hv_socket: Path) -> Path:
    return write_toml(tmp_path / "guest.toml", guest_config(DOMID, hv_socket, lowmem="16M", vcpus=1, qmp=tmp_path / "qmp"))


async def run_guest(config: Path, lines: list[dict]) -> tuple[int, list[dict]]:
    run = await run_script_async(config, lines)
    return run.returncode, run.results


async def test_a_crashed_domain_ends_the_script_with_status_1(sim_process, tmp_path: Path) -> None:
    await sim_process.create_domain(DOMID)
    with DomainControl(sim_process.path) as control:
        control.shutdown(DOMID, 1)
    code, out = await run_guest(write_guest(tmp_path, sim_process.path),
                                [{"dimm": None, "function": 0}, {"dimm": None, "function": 0}])
    assert code == 1
    assert len(out) == 1 and out[0]["error"].startswith("device model stopped answering")


async def test_without_a_device_model_the_first_call_ends_the_script(sim_process, tmp_path: Path) -> None:
    await sim_process.create_domain(DOMID)
    code, out = await run_guest(write_guest(tmp_path, sim_process.path),
                                [{"read": 0x1000, "length": 4}, {"dimm": None, "function": 0}, {"read": 0, "length": 1}])
    assert code == 1
    assert out[0] == {"data": "00000000"}
    assert out[1]["error"].startswith("device model stopped answering") and len(out) == 2


async def test_a_malformed_line_is_answered_and_the_script_goes_on(sim_process, tmp_path: Path) -> None:
    await sim_process.create_domain(DOMID)
    config = write_guest(tmp_path, sim_process.path)
    code, out = await run_guest(config, [{"dimm": "zero", "function": 0}, {"read": 0x1000, "length": 2}])
    assert code == 0
    assert "dimm must be a slot number" in out[0]["error"]
    assert out[1] == {"data": "0000"}
