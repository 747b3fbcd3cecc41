"""The Xen ioreq protocol: ABI layouts (`abi`), the pure request machine (`machine`)
and the daemon's generic ioreq server (`server`)."""
