"""The Xen libraries and the C signatures pmemd calls, loaded once on first use.

Every function gets explicit argtypes/restype: ctypes' int default would truncate the
64-bit handles these libraries return.
"""

from __future__ import annotations

import ctypes as C
import os
from dataclasses import dataclass
from functools import cache

from pmemd.xen.errors import HypervisorError

VP = C.c_void_p
U16, U32, U64, INT, UINT, ULONG = C.c_uint16, C.c_uint32, C.c_uint64, C.c_int, C.c_uint, C.c_ulong

LIBRARIES = {
    "dm": "libxendevicemodel.so.1",
    "fm": "libxenforeignmemory.so.1",
    "ev": "libxenevtchn.so.1",
    "xc": "libxenctrl.so.4.17",
}

# name: (library, restype, argtypes)
SIGNATURES: dict[str, tuple[str, object, list[object]]] = {
    "xendevicemodel_open": ("dm", VP, [VP, UINT]),
    "xendevicemodel_close": ("dm", INT, [VP]),
    "xendevicemodel_create_ioreq_server": ("dm", INT, [VP, U16, INT, C.POINTER(U16)]),
    "xendevicemodel_get_ioreq_server_info": (
        "dm", INT, [VP, U16, U16, C.POINTER(U64), C.POINTER(U64), C.POINTER(U32)]),
    "xendevicemodel_map_io_range_to_ioreq_server": ("dm", INT, [VP, U16, U16, INT, U64, U64]),
    "xendevicemodel_unmap_io_range_from_ioreq_server": ("dm", INT, [VP, U16, U16, INT, U64, U64]),
    "xendevicemodel_set_ioreq_server_state": ("dm", INT, [VP, U16, U16, INT]),
    "xendevicemodel_destroy_ioreq_server": ("dm", INT, [VP, U16, U16]),
    "xendevicemodel_shutdown": ("dm", INT, [VP, U16, UINT]),
    "xendevicemodel_nr_vcpus": ("dm", INT, [VP, U16, C.POINTER(UINT)]),
    "xenforeignmemory_open": ("fm", VP, [VP, UINT]),
    "xenforeignmemory_close": ("fm", INT, [VP]),
    "xenforeignmemory_map": ("fm", VP, [VP, U32, INT, C.c_size_t, C.POINTER(ULONG), C.POINTER(INT)]),
    "xenforeignmemory_unmap": ("fm", INT, [VP, VP, C.c_size_t]),
    "xenforeignmemory_map_resource": ("fm", VP, [VP, U16, UINT, UINT, ULONG, ULONG, C.POINTER(VP), INT, INT]),
    "xenforeignmemory_unmap_resource": ("fm", INT, [VP, VP]),
    "xenevtchn_open": ("ev", VP, [VP, UINT]),
    "xenevtchn_close": ("ev", INT, [VP]),
    "xenevtchn_fd": ("ev", INT, [VP]),
    "xenevtchn_bind_interdomain": ("ev", INT, [VP, U32, U32]),
    "xenevtchn_unbind": ("ev", INT, [VP, U32]),
    "xenevtchn_notify": ("ev", INT, [VP, U32]),
    "xc_interface_open": ("xc", VP, [VP, VP, UINT]),
    "xc_interface_close": ("xc", INT, [VP]),
    "xc_domain_getinfolist": ("xc", INT, [VP, U32, UINT, VP]),
    "xc_domain_setmaxmem": ("xc", INT, [VP, U32, U64]),
    "xc_domain_populate_physmap_exact": ("xc", INT, [VP, U32, ULONG, UINT, UINT, C.POINTER(ULONG)]),
}


@dataclass(frozen=True)
class XenLibs:
    """The loaded functions, by C name (`libs.f["xenevtchn_fd"]`)."""

    f: dict[str, C._CFuncPtr]  # type: ignore[name-defined]


@cache
def load() -> XenLibs:
    """Load the libraries; a missing one is a clear HypervisorError naming the Debian package."""
    handles = {}
    for key, soname in LIBRARIES.items():
        try:
            handles[key] = C.CDLL(soname, use_errno=True)
        except OSError as e:
            raise HypervisorError(
                2, f"{soname} is not installed ({e}); on Debian install xen-utils-4.17 (it pulls the libraries)"
            ) from None
    functions = {}
    for name, (lib, restype, argtypes) in SIGNATURES.items():
        fn = getattr(handles[lib], name)
        fn.restype = restype
        fn.argtypes = argtypes
        functions[name] = fn
    return XenLibs(functions)


def check(rc: int | None, what: str) -> int:
    """`rc` when the call succeeded (non-negative int or non-NULL pointer); else HypervisorError(errno)."""
    if rc is None or rc < 0:
        code = C.get_errno() or 5  # EIO when the library set none
        raise HypervisorError(code, f"{what}: {os.strerror(code)}")
    return rc
