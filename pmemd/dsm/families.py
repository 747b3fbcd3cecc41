"""The function table of each target kind; new DSM functions are registered here.

  NFIT root (bus family, revision 1): ARS 1-4 (`ars`), translate SPA 5 (`translate`),
    error injection 7-9 (`inject`).
  Intel DIMM family (functions 1-10 revision 1, 11+ revision 2): labels 4-6; SMART
    1, 2, 10 at revision 1 and 17, 18 at revision 2 (`smart`).
  Any other DIMM family (HPE1, MSFT, Hyper-V): function 0 answers bit 0 alone, and the
    Intel label functions 4-6 are served unadvertised, for the `_LSx` methods.

Linux keeps one family mask for the whole bus and clears Intel from it for each DIMM it
registers (in handle order) that does not answer the Intel GUID, so on a mixed bus an Intel
DIMM must hold the highest slot or every Intel ND_CMD_CALL fails with EINVAL; the config
enforces it (`config._check_intel_dimm_last`).
"""

from __future__ import annotations

from .ars import register_ars_functions
from .devices import Dimm, Root
from .functions import FunctionTable
from .inject import register_inject_functions
from .labels import register_label_functions
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
    return table


class LabelMethodsTable(FunctionTable[Dimm]):
    """A non-Intel DIMM's table: its family is present, its only calls come from `_LSx`.

    The SSDT's `_LSI/_LSR/_LSW` call Intel label functions 4/5/6 by handle whatever the
    DIMM's `_DSM` family, so those are served; but function 0 (reached only with this
    DIMM's family UUID, the AML checks it) answers bit 0 alone at revision 1, so Linux
    finds the family, no `_DSM` function in it, and reads labels through the methods.
    """

    def mask(self, revision: int, device: Dimm) -> int:
        return 1 if revision == 1 else 0


def label_methods_dimm_functions() -> FunctionTable[Dimm]:
    """Functions of a DIMM whose `_DSM` family is not Intel's (see `LabelMethodsTable`)."""
    table = LabelMethodsTable("label-methods-dimm")
    register_label_functions(table)
    return table
