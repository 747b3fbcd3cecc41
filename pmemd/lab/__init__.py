"""`pmemd lab`: an unmodified Linux guest under QEMU as the test client of the daemon."""
