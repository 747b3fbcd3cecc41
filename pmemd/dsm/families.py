"""The function table of each target kind; new DSM functions are registered here.

  NFIT root (bus family, revision 1): ARS 1-4 (`ars`), translate SPA 5 (`translate`),
    error injection 7-9 (`inject`).
  Intel DIMM family (functions 1-10 revision 1, 11+ revision 2): labels 4-6; SMART
    1, 2, 10 at revision 1 and 17, 18 at revision 2 (`smart`); firmware update 12-16 and
    activation 29, 30 at revision 2 (`firmware_functions`); security 19-28 at
    revision 2 (`security_functions`).
  Intel bus family (the root's second `_DSM` UUID, handle `INTEL_BUS_HANDLE`): firmware
    activation 1, 2 (`firmware_functions.intel_bus_functions`).
  Any other DIMM family: its health function(s) from the shared health model
    (`family_health`: HPE1 1, MSFT 11, Hyper-V 1 and 2), and the Intel label functions 4-6
    served unadvertised, for the `_LSx` methods.

Linux keeps one family mask for the whole bus and clears Intel from it for each DIMM it
registers (in handle order) that does not answer the Intel GUID, so on a mixed bus an Intel
DIMM must hold the highest slot or every Intel ND_CMD_CALL fails with EINVAL; the config
enforces it (`config._check_intel_dimm_last`).
"""

from __future__ import annotations

from .ars import register_ars_functions
from .devices import Dimm, Root
from .family_health import register_hpe1_health, register_hyperv_health, register_msft_health
from .firmware_functions import register_firmware_functions
from .functions import FunctionTable
from .inject import register_inject_functions
from .labels import register_label_functions
from .security_functions import register_security_functions
from .smart import register_smart_functions
from .translate import register_translate_function


def nfit_root_functions() -> FunctionTable[Root]:
    """Functions of the NVDIMM root device (handle 0)."""
    table: FunctionTable[Root] = FunctionTable("nfit-root")
    register_ars_functions(table)
    register_translate_function(table)
    register_inject_functions(table)
    return table


def intel_dimm_functions() -> FunctionTable[Dimm]:
    """Functions of an Intel-family DIMM (handle slot + 1)."""
    table: FunctionTable[Dimm] = FunctionTable("intel-dimm")
    register_label_functions(table)
    register_smart_functions(table)
    register_firmware_functions(table)
    register_security_functions(table)
    return table


LABEL_FUNCTION_BITS = (1 << 4) | (1 << 5) | (1 << 6)


class LabelMethodsTable(FunctionTable[Dimm]):
    """A non-Intel DIMM's table: its own family's functions, plus labels for `_LSx`.

    The SSDT's `_LSI/_LSR/_LSW` call Intel label functions 4/5/6 by handle whatever the
    DIMM's `_DSM` family, so those are served but never advertised: function 0 (reached
    only with this DIMM's family UUID, the AML checks it) answers bit 0 and the family's
    own functions at revision 1, so Linux finds the family and reads labels through the
    methods (it uses label DSMs only for the Intel family).
    """

    def mask(self, revision: int, device: Dimm) -> int:
        if revision != 1:
            return 0
        return (super().mask(revision, device) & ~LABEL_FUNCTION_BITS) | 1


_FAMILY_HEALTH = {"hpe1": register_hpe1_health, "msft": register_msft_health, "hyperv": register_hyperv_health}


def label_methods_dimm_functions(family: str) -> FunctionTable[Dimm]:
    """Functions of a DIMM whose `_DSM` family (`hpe1`, `msft`, `hyperv`) is not Intel's."""
    table = LabelMethodsTable(f"{family}-dimm")
    register_label_functions(table)
    _FAMILY_HEALTH[family](table)
    return table
