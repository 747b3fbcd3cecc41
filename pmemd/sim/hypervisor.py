"""The simulated hypervisor: Xen + libxendevicemodel/libxenforeignmemory/libxenevtchn.

Run it in its own process (`pmemd sim --socket PATH` calls `serve_hypervisor`) or in
the daemon's own trio run ("embedded": start `serve_hypervisor` in a nursery on a
private socket path). Clients speak the frames of `pmemd.sim.wire`.

Requests (JSON, `op` plus arguments; every reply is `{"ok": true, ...}` or an errno):

  domain_create domid lowmem highmem mmio_hole vcpus   (created paused)
  domain_unpause / domain_pause / domain_destroy / domain_info  domid
  domain_shutdown domid reason                          (xendevicemodel_shutdown)
  ioreq_server_create domid handle_bufioreq -> id
  ioreq_server_info domid id -> ioreq_gfn/bufioreq_gfn None (XEN_DMOP_no_gfns), bufioreq_port None
  ioreq_server_map_resource domid id frame -> fd of the page (frame 1 = sync page)
  ioreq_server_map_range / _unmap_range domid id is_mmio start end   (end inclusive)
  ioreq_server_set_state domid id enabled
  ioreq_server_destroy domid id
  foreign_map domid gfn nr -> fd of guest RAM + offset to mmap
  evtchn_open -> handle + fd (one end of a socketpair: 4-byte ports both ways)
  evtchn_bind_interdomain handle domid remote_port -> local_port
  evtchn_unbind handle port
  guest_attach domid vcpu -> layout + RAM fd; then binary GuestAccess frames
  platform_map domid -> fd of the domain's platform page (GPE status, vMCE poison table)
  gpe_take domid -> gpes: the pending GPEs, cleared (the guest's OSPM taking the SCI)

A guest read meeting a range in the platform page's poison table fails with EHWPOISON
(a machine check) instead of returning data.
  host_pmem_add device spa_base [data] [reserved] files   (XENPF_pmem_add; see hv_pmem)
  host_pmem_list -> regions
  populate_pmem_map domid mfn gfn nr_mfns               (XENMEM_populate_pmem_map)
  physmap_info domid -> pmem_runs, pmem_frames, owned_frames

Paused domains: guest accesses *wait* until the domain is unpaused (its vCPUs are not
scheduled), and fail with ESRCH if it dies instead.

Resources: a connection's ioreq servers and event-channel handles are destroyed when
it closes (Xen would leave the guest hanging on a dead emulator; the simulator
completes such accesses as unhandled instead). Destroying a domain destroys its
servers, unbinds its ports and releases its RAM.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
from collections.abc import Callable
from typing import Any

import structlog
import trio

from pmemd.sim import ioreq, wire
from pmemd.sim.errors import WireError, XenError, error_reply
from pmemd.sim.hv_domain import DESTROYED, PAUSED, RANGE_MMIO, RANGE_PORT, Domain, Layout, SimIoreqServer
from pmemd.sim.hv_emulate import ACCESS_SIZES, MAX_REPS
from pmemd.sim.hv_evtchn import Binding, EvtchnHandle
from pmemd.sim.hv_platform import Platforms
from pmemd.sim.hv_pmem import HostPmem, PmemAccess, PmemRegion, populate_pmem_map

log = structlog.get_logger("pmemd.sim.hypervisor")

DOMID_FIRST_RESERVED = 0x7FF0


class Hypervisor:
    """All simulator state; socket-free so tests and benches can drive it in-process."""

    def __init__(self) -> None:
        self.domains: dict[int, Domain] = {}
        self.handles: dict[int, EvtchnHandle] = {}
        self._handle_ids = itertools.count(1)
        self._local_ports = itertools.count(1)  # dom0's port space, shared by all handles
        self.bindings: dict[tuple[int, int], Binding] = {}  # (domid, xen port) -> binding
        self.platforms = Platforms()  # per-domain GPE status and vMCE poison (hv_platform)
        self.pmem = HostPmem()  # host pmem regions and which domain owns each frame
        # Glue for the rest of the simulated host (pmemd.sim.hvmloader.attach): run at a domain's
        # unpause from paused, before its vCPUs run; and once it is destroyed.
        self.on_unpause: list[Callable[[Domain], None]] = []
        self.on_destroy: list[Callable[[Domain], None]] = []

    # -- domains --------------------------------------------------------------------
    def domain(self, domid: Any) -> Domain:
        dom = self.domains.get(domid) if isinstance(domid, int) else None
        if dom is None:
            raise XenError(errno.ESRCH, f"no domain {domid}")
        return dom

    def create_domain(self, domid: int, layout: Layout) -> Domain:
        if not 1 <= domid < DOMID_FIRST_RESERVED:
            raise XenError(errno.EINVAL, f"domid {domid} outside 1..{DOMID_FIRST_RESERVED - 1}")
        old = self.domains.get(domid)
        if old is not None and old.state != "destroyed":
            raise XenError(errno.EEXIST, f"domain {domid} exists")
        dom = Domain(domid, layout, self._notify_xen_port)
        dom.pmem_io = PmemAccess(dom.physmap, self.pmem)
        self.domains[domid] = dom
        return dom

    def unpause_domain(self, dom: Domain) -> None:
        if dom.state == PAUSED:
            for hook in self.on_unpause:
                hook(dom)
        dom.unpause()

    def destroy_domain(self, dom: Domain) -> None:
        first = dom.state != DESTROYED
        for port in dom.destroy():
            self._unbind(self.bindings.get((dom.domid, port)))
        self.pmem.release(dom.domid)  # Xen's RELMEM_pmem: frames go back with the domain
        self.platforms.drop(dom)
        for hook in self.on_destroy if first else ():
            hook(dom)

    def populate_pmem_map(self, dom: Domain, mfn: int, gfn: int, nr: int) -> None:
        """XENMEM_populate_pmem_map: map host pmem frames at `gfn` in a live domain."""
        dom._require_alive()

        def ioreq_overlap(start: int, end: int) -> int | None:
            return next((s.id for s in dom.servers.values() if s.ranges[RANGE_MMIO].overlaps(start, end)), None)

        populate_pmem_map(self.pmem, dom.physmap, dom.domid, mfn, gfn, nr, ioreq_overlap)

    def destroy_server(self, dom: Domain, server: SimIoreqServer) -> None:
        for port in dom.destroy_server(server):
            self._unbind(self.bindings.get((dom.domid, port)))

    # -- event channels ---------------------------------------------------------------
    def _notify_xen_port(self, dom: Domain, xen_port: int) -> None:
        binding = self.bindings.get((dom.domid, xen_port))
        if binding is None:
            dom.log.warning("notify on an unbound ioreq port: event lost", port=xen_port)
            return
        binding.handle.deliver(binding.local_port)

    def _on_dm_notify(self, binding: Binding) -> None:
        dom = self.domains.get(binding.domid)
        if dom is not None and dom.alive:
            dom.event(binding.xen_port)

    def open_evtchn(self) -> tuple[EvtchnHandle, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        handle = EvtchnHandle(next(self._handle_ids), ours)
        self.handles[handle.id] = handle
        return handle, theirs

    async def serve_evtchn(self, handle: EvtchnHandle) -> None:
        try:
            await handle.serve(self._on_dm_notify)
        except trio.ClosedResourceError:
            pass

    def close_evtchn(self, handle: EvtchnHandle) -> None:
        for binding in list(handle.bindings.values()):
            self._unbind(binding)
        self.handles.pop(handle.id, None)
        if not handle.closed:
            trio.lowlevel.notify_closing(handle.sock)
        handle.close()

    def bind_interdomain(self, handle: EvtchnHandle, dom: Domain, remote_port: int) -> int:
        if not dom.alive:
            raise XenError(errno.ESRCH, f"domain {dom.domid} is {dom.state}")
        if remote_port not in dom.ports:
            raise XenError(errno.EINVAL, f"port {remote_port} of domain {dom.domid} is not an unbound ioreq port")
        if (dom.domid, remote_port) in self.bindings:
            raise XenError(errno.EBUSY, f"port {remote_port} of domain {dom.domid} is already bound")
        binding = Binding(next(self._local_ports), handle, dom.domid, remote_port)
        handle.bindings[binding.local_port] = binding
        self.bindings[(dom.domid, remote_port)] = binding
        return binding.local_port

    def _unbind(self, binding: Binding | None) -> None:
        if binding is not None:
            binding.handle.bindings.pop(binding.local_port, None)
            self.bindings.pop((binding.domid, binding.xen_port), None)


def _int(msg: dict[str, Any], key: str) -> int:
    value = msg.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise XenError(errno.EINVAL, f"{key!r} must be an integer")
    return value


class Connection:
    """One client socket: control, device model and guest roles may be mixed."""

    _ids = itertools.count(1)

    def __init__(self, hv: Hypervisor, channel: wire.AsyncChannel, nursery: trio.Nursery) -> None:
        self.id = next(self._ids)
        self.hv = hv
        self.channel = channel
        self.nursery = nursery
        self.servers: list[tuple[Domain, SimIoreqServer]] = []
        self.handles: list[EvtchnHandle] = []
        self.guest: tuple[Domain, int] | None = None
        self.log = log.bind(conn=self.id)
        self._ops: dict[str, Callable[[dict[str, Any]], tuple[dict[str, Any], list[int]]]] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("_op_")
        }

    async def serve(self) -> None:
        try:
            while (frame := await self.channel.receive()) is not None:
                kind, body = frame
                if kind == wire.KIND_ACCESS:
                    await self._guest_access(body)
                elif kind == wire.KIND_JSON:
                    await self._request(wire.decode_json(body))
                else:
                    raise WireError(f"unknown frame kind {kind}")
        except (WireError, ConnectionError) as exc:
            self.log.warning("connection dropped", error=str(exc))
        finally:
            self._release()

    def _release(self) -> None:
        for dom, server in self.servers:
            if dom.alive and not server.destroyed:
                self.hv.destroy_server(dom, server)
        for handle in self.handles:
            self.hv.close_evtchn(handle)
        if self.guest is not None:
            dom, vcpu = self.guest
            dom.vcpus[vcpu].attached = False
        self.channel.close()

    async def _request(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        fds: list[int] = []
        try:
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise XenError(errno.ENOSYS, f"unknown op {op!r}")
            reply, fds = handler(msg)
            reply = {"ok": True, **reply, "nfds": len(fds)}
        except XenError as exc:
            if op not in ("domain_info",):
                self.log.info("request refused", op=op, errno=exc.name, error=exc.message)
            reply = error_reply(exc)
        try:
            await self.channel.send(wire.encode_json(reply), fds)
        finally:
            for fd in fds:
                os.close(fd)

    # -- domain control ---------------------------------------------------------------
    def _op_domain_create(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        layout = Layout(_int(m, "lowmem"), _int(m, "highmem"), _int(m, "mmio_hole"), _int(m, "vcpus"))
        return self.hv.create_domain(_int(m, "domid"), layout).info(), []

    def _op_domain_unpause(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        self.hv.unpause_domain(self.hv.domain(m.get("domid")))
        return {}, []

    def _op_domain_pause(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        self.hv.domain(m.get("domid")).pause()
        return {}, []

    def _op_domain_destroy(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        self.hv.destroy_domain(self.hv.domain(m.get("domid")))
        return {}, []

    def _op_domain_info(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        return self.hv.domain(m.get("domid")).info(), []

    def _op_domain_shutdown(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        self.hv.domain(m.get("domid")).shutdown(_int(m, "reason"))
        return {}, []

    # -- ioreq servers --------------------------------------------------------------------
    def _server(self, m: dict[str, Any]) -> tuple[Domain, SimIoreqServer]:
        dom = self.hv.domain(m.get("domid"))
        return dom, dom.server(_int(m, "id"))

    def _op_ioreq_server_create(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        dom = self.hv.domain(m.get("domid"))
        server = dom.create_server(self.id, _int(m, "handle_bufioreq"))
        self.servers.append((dom, server))
        return {"id": server.id}, []

    def _op_ioreq_server_info(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        self._server(m)
        return {"ioreq_gfn": None, "bufioreq_gfn": None, "bufioreq_port": None}, []

    def _op_ioreq_server_map_resource(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        dom, server = self._server(m)
        if server.owner != self.id:
            raise XenError(errno.EPERM, "only the creator of an ioreq server may map its pages")
        if _int(m, "frame") != ioreq.XENMEM_RESOURCE_IOREQ_SERVER_FRAME_SYNC:
            raise XenError(errno.ENOENT, "only frame 1 (the synchronous page) exists with BUFIOREQ_OFF")
        return {}, [os.dup(server.page_fd)]

    def _range_args(self, m: dict[str, Any]) -> tuple[int, int, int]:
        kind = RANGE_MMIO if m.get("is_mmio") else RANGE_PORT
        return kind, _int(m, "start"), _int(m, "end")

    def _op_ioreq_server_map_range(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        dom, server = self._server(m)
        dom.map_range(server, *self._range_args(m))
        return {}, []

    def _op_ioreq_server_unmap_range(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        dom, server = self._server(m)
        dom.unmap_range(server, *self._range_args(m))
        return {}, []

    def _op_ioreq_server_set_state(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        dom, server = self._server(m)
        dom.set_server_state(server, bool(m.get("enabled")))
        return {}, []

    def _op_ioreq_server_destroy(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        dom, server = self._server(m)
        self.hv.destroy_server(dom, server)
        return {}, []

    def _op_foreign_map(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        dom = self.hv.domain(m.get("domid"))
        offset = dom.foreign_offset(_int(m, "gfn"), _int(m, "nr"))
        return {"offset": offset}, [os.dup(dom.ram.fd)]

    # -- platform: GPEs and vMCE poison (hv_platform) -------------------------------------------
    def _op_platform_map(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        dom = self.hv.domain(m.get("domid"))
        dom._require_alive()
        return {}, [os.dup(self.hv.platforms.of(dom).fd)]

    def _op_gpe_take(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        return {"gpes": self.hv.platforms.of(self.hv.domain(m.get("domid"))).take_gpes()}, []

    # -- event channels ---------------------------------------------------------------------
    def _op_evtchn_open(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        handle, theirs = self.hv.open_evtchn()
        self.handles.append(handle)
        self.nursery.start_soon(self.hv.serve_evtchn, handle)
        fd = theirs.detach()
        return {"handle": handle.id}, [fd]

    def _handle(self, m: dict[str, Any]) -> EvtchnHandle:
        handle_id = _int(m, "handle")
        for handle in self.handles:
            if handle.id == handle_id:
                return handle
        raise XenError(errno.EBADF, f"no event-channel handle {handle_id} on this connection")

    def _op_evtchn_bind_interdomain(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        handle = self._handle(m)
        port = self.hv.bind_interdomain(handle, self.hv.domain(m.get("domid")), _int(m, "remote_port"))
        return {"local_port": port}, []

    def _op_evtchn_unbind(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        handle = self._handle(m)
        binding = handle.bindings.get(_int(m, "port"))
        if binding is None:
            raise XenError(errno.EINVAL, "port not bound on this handle")
        self.hv._unbind(binding)
        return {}, []

    # -- host pmem -------------------------------------------------------------------------------
    def _op_host_pmem_add(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        self.hv.pmem.add_region(PmemRegion.from_mapping(m))
        return {}, []

    def _op_host_pmem_list(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        return {"regions": [region.as_dict() for region in self.hv.pmem.regions]}, []

    def _op_populate_pmem_map(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        dom = self.hv.domain(m.get("domid"))
        self.hv.populate_pmem_map(dom, _int(m, "mfn"), _int(m, "gfn"), _int(m, "nr_mfns"))
        return {}, []

    def _op_physmap_info(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        dom = self.hv.domain(m.get("domid"))
        runs = dom.physmap.pmem_runs()
        return {"pmem_runs": len(runs), "pmem_frames": sum(nr for _, _, nr in runs),
                "owned_frames": self.hv.pmem.owned_by(dom.domid)}, []

    # -- guest ---------------------------------------------------------------------------------
    def _op_guest_attach(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        dom = self.hv.domain(m.get("domid"))
        vcpu = _int(m, "vcpu")
        if self.guest is not None:
            raise XenError(errno.EBUSY, "this connection is already attached to a vCPU")
        if not 0 <= vcpu < len(dom.vcpus):
            raise XenError(errno.EINVAL, f"domain {dom.domid} has no vcpu {vcpu}")
        if dom.vcpus[vcpu].attached:
            raise XenError(errno.EBUSY, f"vcpu {vcpu} of domain {dom.domid} is already attached")
        if not dom.alive:
            raise XenError(errno.ESRCH, f"domain {dom.domid} is {dom.state}")
        dom.vcpus[vcpu].attached = True
        self.guest = (dom, vcpu)
        return dom.layout.as_dict(), [os.dup(dom.ram.fd)]

    async def _guest_access(self, body: bytes) -> None:
        if self.guest is None or len(body) != wire.ACCESS_STRUCT.size:
            raise WireError("guest access before guest_attach, or malformed")
        space, dir_, size, flags, count, addr, data = wire.ACCESS_STRUCT.unpack(body)
        dom, vcpu = self.guest
        req = ioreq.Request(
            ioreq.IOREQ_TYPE_COPY if space == wire.SPACE_MMIO else ioreq.IOREQ_TYPE_PIO,
            addr, data, count, size, ioreq.IOREQ_READ if dir_ else ioreq.IOREQ_WRITE,
            bool(flags & wire.ACCESS_FLAG_DF), bool(flags & wire.ACCESS_FLAG_DATA_IS_PTR),
        )
        status, trapped, result = 0, 0, 0
        try:
            check_guest_access(req, space)
            self.hv.platforms.check_read(dom, req, space)
            result, was_trapped = await dom.access(vcpu, req)
            trapped = int(was_trapped)
        except XenError as exc:
            status = -(exc.errno or errno.EIO)
        await self.channel.send(
            wire.encode_binary(wire.KIND_ACCESS_REPLY, wire.ACCESS_REPLY_STRUCT.pack(status, trapped, result))
        )


def check_guest_access(req: ioreq.Request, space: int) -> None:
    """What the x86 emulator would never produce; refused before routing."""
    if space not in (wire.SPACE_PORT, wire.SPACE_MMIO):
        raise XenError(errno.EINVAL, f"unknown space {space}")
    if req.size not in ACCESS_SIZES or (space == wire.SPACE_PORT and req.size == 8):
        raise XenError(errno.EINVAL, f"size {req.size} invalid for this space")
    if not 1 <= req.count <= MAX_REPS:
        raise XenError(errno.EINVAL, f"count {req.count} outside 1..{MAX_REPS}")
    if space == wire.SPACE_PORT and req.addr > 0xFFFF:
        raise XenError(errno.EINVAL, f"port {req.addr:#x} > 0xffff")


async def serve_hypervisor(
    path: str | os.PathLike[str],
    *,
    hypervisor: Hypervisor | None = None,
    task_status: trio.TaskStatus[Hypervisor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the simulator on a Unix socket at `path` until cancelled.

    `task_status.started(hypervisor)` is called once the socket listens, so in-process
    ("embedded") users get the `Hypervisor` object for direct inspection.

    Resources: the socket file is unlinked on exit; every connection's servers and
    event-channel handles are released when it closes.
    """
    hv = hypervisor or Hypervisor()
    path = os.fspath(path)
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        await listener.bind(path)
        listener.listen(64)
        log.info("simulated hypervisor listening", socket=path)
        async with trio.open_nursery() as nursery:
            task_status.started(hv)
            while True:
                sock, _ = await listener.accept()
                conn = Connection(hv, wire.AsyncChannel(sock), nursery)
                nursery.start_soon(conn.serve)
    finally:
        listener.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def main(argv: list[str] | None = None) -> None:
    """`python -m pmemd.sim.hypervisor SOCKET`: serve, print "ready" once listening."""
    import sys
    from functools import partial

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m pmemd.sim.hypervisor SOCKET")

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_hypervisor, args[0]))
            print("ready", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
