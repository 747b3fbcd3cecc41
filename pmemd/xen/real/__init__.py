"""The real-Xen backend of `pmemd.xen.api`: ctypes over Debian's Xen 4.17 libraries.

Chosen by `[xen] hypervisor = "xen"`. ctypes over the stable shared libraries
(libxendevicemodel, libxenforeignmemory, libxenevtchn) plus libxenctrl for domain info,
populate and the memory limit: no Python binding of 4.17's libraries is kept up, and ctypes
needs no compiler on the host or in the container.
"""
