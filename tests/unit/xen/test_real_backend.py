"""The real-Xen backend: registered by name, its C signatures resolve, and without Xen it fails clearly."""

from __future__ import annotations

import ctypes.util
import os

import pytest

from pmemd.xen import backends
from pmemd.xen.errors import HypervisorError


def have_xen_libraries() -> bool:
    return ctypes.util.find_library("xendevicemodel") is not None and ctypes.util.find_library("xenctrl") is not None


def test_hypervisor_xen_selects_the_real_backend_and_paths_select_the_simulator() -> None:
    assert backends.backend_name("xen") == "xen"
    assert backends.backend_name("/run/pmemd/sim.sock") == "sim"


@pytest.mark.skipif(not have_xen_libraries(), reason="Xen 4.17 libraries not installed (xen-utils-4.17)")
def test_every_declared_function_exists_in_the_installed_libraries() -> None:
    from pmemd.xen.real import libs

    loaded = libs.load()
    assert set(loaded.f) == set(libs.SIGNATURES)


@pytest.mark.skipif(not have_xen_libraries(), reason="Xen 4.17 libraries not installed (xen-utils-4.17)")
@pytest.mark.skipif(os.path.exists("/dev/xen/privcmd"), reason="this host runs on Xen")
async def test_connecting_without_xen_is_a_hypervisor_error_not_a_crash() -> None:
    with pytest.raises(HypervisorError, match="xendevicemodel_open|xenforeignmemory_open|xc_interface_open"):
        await backends.connect_hypervisor("xen", 5)
