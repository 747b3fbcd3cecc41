"""The page: Xen's frame size (XEN_PAGE_SHIFT), which is also the x86 host's and guest's page.

One definition for every frame number the daemon computes: ioreq pages, foreign mappings,
dm-acpi buffers, host pmem frames and the extents that back them.
"""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
