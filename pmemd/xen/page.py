"""The page: Xen's frame size (XEN_PAGE_SHIFT), which is also the x86 host's and guest's page.

One definition for every frame number either world computes: the daemon's ioreq pages, foreign
mappings, dm-acpi buffers and pmem extents, and the simulated hypervisor's physmap and ioreq page
(a fact from Xen's headers, not a daemon rule, so the simulator may share it). Only `acpi/`, which
imports nothing of pmemd, states the DSM page's size on its own.
"""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
