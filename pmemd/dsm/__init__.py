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
"""
