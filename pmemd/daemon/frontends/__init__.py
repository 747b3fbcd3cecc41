"""The DSM front ends: the Xen DSM page device (ioreqs) and the QEMU doorbell."""
