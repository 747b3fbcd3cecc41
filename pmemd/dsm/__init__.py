"""_DSM dispatch and handlers: pure functions from a request to a reply, with no I/O.

Typical use, per guest (the daemon opens the label stores: `pmemd.daemon.label_file`):

    handlers = build_dispatcher(config, label_stores)
    reply = handlers.dispatcher.dispatch(page_bytes)   # bytes for the page's offset 0

Modules: `call` (Call, Reply, Status, parse_input), `page` (page codec), `functions`
(FunctionTable: registration), `dispatcher` (routing, observers by `Phase`), `devices`
(Root, Dimm), `families` (tables per target kind: register new functions there), `labels`
(fns 4-6), `label_store` (LabelStore protocol, MemoryLabelStore), `build` (build_dispatcher
→ DsmHandlers: the dispatcher and its devices).

Media errors and health: `poison` (bounded coalesced ranges), `spa` (the guest's PMEM
ranges), `scrub` (ARS progress from an injected clock), `media` (poison + injections + scrub),
`root_layouts` (root payloads), `ars` (root fns 1-4), `translate` (fn 5), `inject` (fns 7-9 and
the operator's API), `health` + `smart` (Intel fns 1, 2, 10, 17, 18), `family_health` (HPE1 1,
MSFT 11, Hyper-V 1-2 from the same health model), `notify` (Notify 0x81 queues), `state_blob` +
`guest_state` (saved state as bytes).

Security: `security` (the pure per-DIMM state machine, `security_step`), `security_functions`
(Intel fns 19-28), `pmem_store` (where erases write).

Firmware: `firmware_image` (the image format and its verification), `firmware` (the per-DIMM
update and activation state machine, its saved form), `firmware_functions` (Intel fns 12-16,
29, 30 and the root's Intel bus family fns 1, 2). File I/O and the scrubber task live in
`pmemd.daemon`.
"""
