"""DIMM security in the running daemon: security files, power-on locking, erases of the real
backing file, the overwriter, vMCE on a locked DIMM, QMP commands and the save file."""

from __future__ import annotations

import pytest
import trio
from qemu.qmp import ExecuteError

from pmemd import config as configmod
from pmemd.daemon import savefile
from pmemd.daemon.security_service import security_file_path
from pmemd.daemon.serve import serve_guest
from pmemd.dsm.labels import CAPACITY_LOCKED
from pmemd.dsm.media import MediaErrors
from pmemd.dsm.security import Security
from pmemd.dsm.security import SecurityStatus as S
from pmemd.dsm.state_blob import StateFormatError
from pmemd.sim.guest_driver import Guest as GuestDriver
from tests.harness.config import MiB, write_config
from tests.harness.host import leaf
from tests.harness.qmp import connect

DOMID = 14
P1, P2 = b"\x5a" * 32, b"\xa5" * 32
ZERO = bytes(32)
PMEM, LABELS = 4 * MiB, 2 * MiB  # write_config's DIMMs: 6 MiB files, 2 MiB labels


@pytest.fixture
async def config(sim, tmp_path) -> configmod.Config:
    await sim.create_domain(DOMID, vcpus=2, lowmem=64 * MiB)
    cfg = configmod.load(write_config(tmp_path, sim.path, domid=DOMID, nvdimms=2))
    for nvdimm in cfg.nvdimms:
        with open(nvdimm.backing, "r+b") as f:
            f.write(b"\xee" * (PMEM + LABELS))
    return cfg


async def start(sim, config, nursery) -> trio.CancelScope:
    """A daemon in its own cancel scope (cancel it to stop the daemon cleanly)."""
    scope = trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await serve_guest(config, str(sim.path), task_status=task_status)

    await nursery.start(run)
    return scope


async def stop(scope: trio.CancelScope) -> None:
    scope.cancel()
    await trio.sleep(0.05)


async def dsm(config, function: int, payload: bytes = b"", *, revision: int = 2, slot: int = 0) -> int:
    driver = GuestDriver(config, str(config.xen.hypervisor))
    try:
        call = driver.parse_call({"dimm": slot, "function": function, "revision": revision, "arg3": payload.hex()})
        result = await trio.to_thread.run_sync(driver.call, call)
    finally:
        driver.close()
    return result.status


async def guest_read(config, address: int) -> dict:
    driver = GuestDriver(config, str(config.xen.hypervisor))
    try:
        return await trio.to_thread.run_sync(driver.run_line, f'{{"read": {address}, "length": 8}}')
    finally:
        driver.close()


def poisoned(sim, config, slot: int = 0):
    platform = sim.hv.platforms.find(sim.hv.domains[DOMID])
    nvdimm = config.nvdimms[slot]
    return platform.reader.poisoned(nvdimm.address, 8)


def backing(config, slot: int = 0) -> bytes:
    return config.nvdimms[slot].backing.read_bytes()


async def test_a_passphrase_survives_a_restart_which_locks_the_dimm_until_unlocked(sim, config, nursery):
    scope = await start(sim, config, nursery)
    assert await dsm(config, 20, ZERO + P1) == S.SUCCESS
    saved = security_file_path(config.nvdimms[0]).read_bytes()
    assert P1 not in saved
    await stop(scope)
    await start(sim, config, nursery)
    assert await dsm(config, 4, revision=1) == CAPACITY_LOCKED
    assert poisoned(sim, config) is not None
    assert "machine check" in (await guest_read(config, config.nvdimms[0].address + 0x1000))["error"]
    assert await dsm(config, 22, P2) == S.INVALID_PASSPHRASE
    assert await dsm(config, 22, P1) == S.SUCCESS
    assert await dsm(config, 4, revision=1) == S.SUCCESS
    assert poisoned(sim, config) is None


async def test_crypto_erase_zeroes_the_pmem_of_the_backing_file_and_keeps_labels(sim, config, nursery):
    await start(sim, config, nursery)
    assert await dsm(config, 24, ZERO) == S.SUCCESS
    data = backing(config)
    assert data[:PMEM] == bytes(PMEM)
    assert data[PMEM:] == b"\xee" * LABELS
    assert backing(config, 1) == b"\xee" * (PMEM + LABELS)  # the other DIMM is untouched


async def test_overwrite_zeroes_pmem_and_labels_then_query_reports_done(sim, config, nursery):
    await start(sim, config, nursery)
    assert await dsm(config, 20, ZERO + P1) == S.SUCCESS
    assert await dsm(config, 25, P1) == S.SUCCESS
    with trio.fail_after(20):
        while (status := await dsm(config, 26)) == S.OVERWRITE_IN_PROGRESS:  # noqa: ASYNC110 - polls as Linux does
            await trio.sleep(0.05)
    assert status == S.SUCCESS
    assert backing(config) == bytes(PMEM + LABELS)
    assert await dsm(config, 26) == S.OVERWRITE_SEQUENCE_ERROR


async def test_qmp_reports_and_resets_security(sim, config, nursery):
    await start(sim, config, nursery)
    assert await dsm(config, 20, ZERO + P1) == S.SUCCESS
    assert await dsm(config, 21, P2) == S.INVALID_PASSPHRASE
    async with connect(config.qmp_socket) as qmp:
        (info,) = await qmp.execute("pmemd-query-security", {"slot": 0})
        assert (info["state"], info["passphrase-attempts"], info["frozen"]) == ("unlocked", 1, False)
        assert await qmp.execute("pmemd-reset-security", {"slot": 0}) == {}
        (info,) = await qmp.execute("pmemd-query-security", {"slot": 0})
        assert (info["state"], info["passphrase-attempts"]) == ("disabled", 0)
        with pytest.raises(ExecuteError) as missing:
            await qmp.execute("pmemd-reset-security", {})
        assert "Parameter 'slot' is missing" in missing.value.error.error.desc
        with pytest.raises(ExecuteError) as absent:
            await qmp.execute("pmemd-reset-security", {"slot": 7})
        assert absent.value.error_class == "DeviceNotFound"
    assert await dsm(config, 21, P1) == S.INVALID_STATE  # the reset is what the guest sees


async def test_the_save_file_carries_the_exact_state_a_power_on_would_lose(sim, config, nursery, tmp_path):
    guest = await nursery.start(serve_guest, config, str(sim.path))
    assert await dsm(config, 20, ZERO + P1) == S.SUCCESS
    assert await dsm(config, 23) == S.SUCCESS  # frozen: lost at power-on, kept by a save file
    dimms = list(guest.handlers.dimms.values())
    data = savefile.capture(config, guest.handlers.root, dimms)
    assert P1 not in data
    dimms[0].security.power_on()
    assert not dimms[0].security.frozen
    savefile.restore(data, config, guest.handlers.root, dimms)
    assert dimms[0].security.frozen and not dimms[0].security.locked


async def test_a_save_file_with_two_security_records_for_one_slot_is_refused(config) -> None:
    record = savefile.SecurityRecord.build({"slot": 0, "blob": Security().to_bytes()})
    data = savefile.build(3, [(savefile.REC_LAYOUT, savefile._layout(config)),
                              (savefile.REC_MEDIA, MediaErrors.create().to_bytes()),
                              (savefile.REC_SECURITY, record), (savefile.REC_SECURITY, record)])
    with pytest.raises(savefile.SaveFileError, match="security for slot 0 twice"):
        savefile.parse(data, config)


async def test_a_version_2_save_file_may_not_hold_a_security_record(config) -> None:
    record = savefile.SecurityRecord.build({"slot": 0, "blob": Security().to_bytes()})
    data = savefile.build(2, [(savefile.REC_LAYOUT, savefile._layout(config)),
                              (savefile.REC_MEDIA, MediaErrors.create().to_bytes()), (savefile.REC_SECURITY, record)])
    with pytest.raises(savefile.SaveFileError, match="unknown type 5"):
        savefile.parse(data, config)


async def test_a_corrupt_security_file_stops_the_start_up(sim, config) -> None:
    security_file_path(config.nvdimms[0]).write_bytes(b"PMDS garbage")
    with pytest.raises(BaseExceptionGroup) as excinfo:
        await serve_guest(config, str(sim.path))
    error = leaf(excinfo.value)
    assert isinstance(error, StateFormatError) and "nv0.img.pmemd-security" in str(error)
