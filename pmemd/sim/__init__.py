"""The simulated Xen host: hypervisor, xenstored and a guest that runs _DSM calls."""
