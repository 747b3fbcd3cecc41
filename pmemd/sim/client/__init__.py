"""The simulator's client: `DeviceModelHypervisor` over the simulator socket, and sync clients for tools."""
