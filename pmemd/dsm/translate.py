"""NFIT root function 5: translate a guest SPA to the DIMM and DIMM physical address behind it.

Each DIMM is its own non-interleaved SPA range with its PMEM at DPA 0, so one device answers:
DPA = SPA − the DIMM's base, and the translation holds to the end of that DIMM's PMEM.
An SPA outside every DIMM → status 2 ("invalid SPA", as nfit_test). Reference: linux-nfit.md §7.
"""

from __future__ import annotations

from .call import Call, Reply, Status, parse_input
from .devices import Root, slot_to_handle
from .functions import FunctionTable
from .root_layouts import FN_TRANSLATE_SPA, ROOT_REVISION, TranslateSpaInput, TranslateSpaOutput
from .spa import pmem_holding


def translate_spa(call: Call, root: Root) -> Reply:
    """Fn 5: the one DIMM holding `spa`, its DPA, and how many bytes translate contiguously."""
    spa = parse_input(TranslateSpaInput, call.input).spa
    nvdimm = pmem_holding(root.nvdimms, spa, 1)
    if nvdimm is None:
        return Reply.failure(Status.NO_SUCH_DEVICE)
    output = TranslateSpaOutput.build(
        {
            "flags": 0,
            "translate_length": nvdimm.end - spa,
            "num_nvdimms": 1,
            "devices": [{"handle": slot_to_handle(nvdimm.slot), "dpa": spa - nvdimm.address}],
        }
    )
    return Reply.success(output)


def register_translate_function(table: FunctionTable[Root]) -> None:
    """Add fn 5 (revision 1) to the NFIT root table."""
    table.register(FN_TRANSLATE_SPA, ROOT_REVISION, translate_spa)
