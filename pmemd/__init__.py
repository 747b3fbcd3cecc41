"""pmemd: a per-guest Xen device model for virtual NVDIMMs."""
