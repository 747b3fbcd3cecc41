"""Choosing the hypervisor backend from `[xen] hypervisor`; the daemon never names one.

Backends are looked up by module path, so production code holds no import of any of them:
the simulator's client (`pmemd.sim.client`) is only loaded when a config points at a
simulator socket, and the real-Xen backend only when the config says `"xen"`.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable

from pmemd.xen.api import DeviceModelHypervisor

Connect = Callable[[str, int], Awaitable[DeviceModelHypervisor]]

# backend name -> "module:attribute" of its `connect(spec, domid)` coroutine function
BACKENDS: dict[str, str] = {
    "sim": "pmemd.sim.client.device_model:connect",
    "xen": "pmemd.xen.real.backend:connect",
}


def backend_name(spec: str) -> str:
    """The backend `[xen] hypervisor = spec` selects: a name in `BACKENDS`, else a simulator socket path."""
    return spec if spec in BACKENDS else "sim"


def load_backend(name: str) -> Connect:
    """The `connect` function of backend `name` (imported on first use)."""
    module, _, attribute = BACKENDS[name].partition(":")
    connect: Connect = getattr(importlib.import_module(module), attribute)
    return connect


async def connect_hypervisor(spec: str, domid: int) -> DeviceModelHypervisor:
    """Open domain `domid`'s device-model handles on the backend `spec` selects."""
    return await load_backend(backend_name(spec))(spec, domid)
