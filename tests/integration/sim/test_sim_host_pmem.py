"""Host pmem through the simulator's socket: regions added, listed and populated, refusals naming the field,
and `pmemd sim --host-pmem` loading a region file."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio

from pmemd.xen.errors import HypervisorError
from tests.harness.daemon import start_sim

MiB = 1 << 20
P = 4096
SPA = 0x10_0000_0000  # the simulated host pmem's SPA base
PMEM_GFN = (8 << 30) // P  # guest pmem at 8 GiB, clear of RAM and the hole


async def test_regions_and_populate_work_over_the_socket(sim) -> None:
    await sim.create_domain(3)
    dm = await sim.dm(3)
    await dm.request("host_pmem_add", device="sim0", spa_base=SPA, data=[SPA, SPA + MiB], reserved=[SPA, SPA + 8 * P])
    listed = (await dm.request("host_pmem_list"))["regions"]
    assert listed == [{"device": "sim0", "spa_base": SPA, "data": [SPA, SPA + MiB],
                       "reserved": [SPA, SPA + 8 * P], "files": []}]
    await dm.populate_pmem_map(SPA // P + 8, PMEM_GFN, 4)
    with pytest.raises(HypervisorError) as info:
        await dm.populate_pmem_map(SPA // P, PMEM_GFN + 4, 1)
    assert info.value.errno == errno.ENXIO
    info_reply = await dm.request("physmap_info", domid=3)
    assert (info_reply["pmem_runs"], info_reply["pmem_frames"], info_reply["owned_frames"]) == (1, 4, 4)


async def test_a_malformed_region_is_refused_naming_the_field(sim) -> None:
    dm = await sim.dm(3)
    with pytest.raises(HypervisorError) as info:
        await dm.request("host_pmem_add", device="sim0", spa_base=SPA + 1, data=[SPA, SPA + MiB])
    assert info.value.errno == errno.EINVAL
    assert "spa_base 0x1000000001 must be a non-negative multiple of 4 KiB" in str(info.value)


async def test_pmemd_sim_loads_its_host_pmem_file(tmp_path: Path) -> None:
    from pmemd.sim.client.sync import SyncClient

    host = tmp_path / "host.toml"
    host.write_text(f'[[region]]\ndevice = "sim0"\nspa_base = {SPA}\ndata = [{SPA}, {SPA + MiB}]\n')
    sock = tmp_path / "hv.sock"
    with start_sim("--socket", str(sock), "--host-pmem", str(host)):

        def regions() -> list[dict]:
            client = SyncClient(str(sock))
            try:
                return client.request("host_pmem_list")["regions"]
            finally:
                client.close()

        assert [r["device"] for r in await trio.to_thread.run_sync(regions)] == ["sim0"]
