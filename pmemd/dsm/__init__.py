"""_DSM dispatch and handlers: pure functions from a request to a reply.

Typical use, per guest:

    with contextlib.ExitStack() as stack:
        dispatcher = build_dispatcher(config, open_label_stores(config, stack))
        reply = dispatcher.dispatch(page_bytes)   # bytes for the page's offset 0

Modules: `call` (Call, Reply, Status, parse_input), `page` (page codec), `functions`
(FunctionTable: registration), `dispatcher` (routing), `devices` (Root, Dimm), `families`
(tables per target kind: register new functions there), `labels` (fns 4-6), `label_store`
(LabelStore protocol, MemoryLabelStore), `label_file` (FileLabelStore and its journal),
`build` (build_dispatcher).

Media errors and health: `poison` (bounded coalesced ranges), `spa` (the guest's PMEM
ranges), `scrub` (ARS progress from an injected clock), `media` (poison + injections + scrub),
`root_layouts` (root payloads), `ars` (root fns 1-4), `translate` (fn 5), `inject` (fns 7-9 and
the operator's API), `badblocks` (host bad blocks as guest poison), `health` + `smart` (Intel
fns 1, 2, 10, 17, 18), `notify` (Notify 0x81 queues), `state_blob` + `persist` (saved state);
`scrubber` is the only trio module (the task reporting completed scrubs).
"""
