"""Requests a dead device model left behind: completed as unhandled so the guest goes on.

On real Xen an ioreq server outlives the process that created it. A vCPU whose access went to
a server whose owner then died waits for that server's reply: in a single-vCPU guest that is
the whole guest, stopped until a new daemon adopts the server. `pmemd release` (after the
daemon died) disables the servers, so no new access reaches them, and then completes what is
left in their slots the way a device model answers an access nobody serves: reads all-ones,
writes dropped (`unhandled_result`). A `_DSM` call caught in the gap then ends with a status
(the AML finds no reply in the page) instead of hanging.
"""

from __future__ import annotations

from pmemd.ioreq import abi
from pmemd.ioreq.machine import IoRequest, needs_completion, unhandled_result
from pmemd.xen.api import DeviceModelHypervisor

# A dead owner may have taken a request (INPROCESS) or not yet (READY); either way Xen waits.
WAITING = (abi.STATE_IOREQ_READY, abi.STATE_IOREQ_INPROCESS)


def stranded_vcpus(page: memoryview, vcpus: int) -> list[int]:
    """The vCPUs whose slot holds a request Xen is waiting on."""
    return [vcpu for vcpu in range(vcpus) if page[abi.slot_offset(vcpu) + abi.BITS_OFFSET] & abi.STATE_MASK in WAITING]


def answer_unhandled(page: memoryview, vcpu: int) -> None:
    """Complete vCPU `vcpu`'s request as unhandled and hand it back to Xen (IORESP_READY)."""
    off = abi.slot_offset(vcpu)
    req = IoRequest.from_slot(abi.SLOT_STRUCT.unpack_from(page, off))
    if needs_completion(req):
        abi.DATA_STRUCT.pack_into(page, off + abi.DATA_OFFSET, unhandled_result(req))
    page[off + abi.BITS_OFFSET] = abi.with_state(page[off + abi.BITS_OFFSET], abi.STATE_IORESP_READY)


async def complete_stranded(hv: DeviceModelHypervisor, server_id: int) -> int:
    """Complete every request waiting in (disabled) server `server_id` and wake its vCPU;
    returns how many there were."""
    vcpus = (await hv.domain_info()).vcpus
    page = await hv.map_ioreq_page(server_id)
    waiting = stranded_vcpus(page, vcpus)
    if not waiting:
        return 0
    evtchn = await hv.open_event_channel()
    try:
        for vcpu in waiting:
            answer_unhandled(page, vcpu)
            (remote,) = abi.PORT_STRUCT.unpack_from(page, abi.slot_offset(vcpu) + abi.VP_EPORT_OFFSET)
            port = await evtchn.bind_interdomain(remote)
            evtchn.notify(port)
            await evtchn.unbind(port)
    finally:
        evtchn.close()
    return len(waiting)
