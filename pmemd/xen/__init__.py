"""The hypervisor as the daemon sees it: the abstract interface (`api`), its errors
(`errors`) and the backend factory (`backends`). Backends live elsewhere: the simulator's
client in `pmemd.sim.client`."""
