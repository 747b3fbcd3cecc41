"""The function table of each target kind; new DSM functions are registered here.

  NFIT root (bus family, revision 1): nothing yet; ARS, clear-error, translate-SPA and
    error injection (functions 1-9) register here.
  Intel DIMM family (functions 1-10 revision 1, 11+ revision 2): labels 4-6; SMART
    (1, 2, 10 at revision 1; 17, 18 at revision 2) register here.
"""

from __future__ import annotations

from .devices import Dimm, Root
from .functions import FunctionTable
from .labels import register_label_functions


def nfit_root_functions() -> FunctionTable[Root]:
    """Functions of the NVDIMM root device (handle 0)."""
    return FunctionTable("nfit-root")


def intel_dimm_functions() -> FunctionTable[Dimm]:
    """Functions of an Intel-family DIMM (handle slot + 1)."""
    table: FunctionTable[Dimm] = FunctionTable("intel-dimm")
    register_label_functions(table)
    return table
