"""Hypervisor client library: the abstract interface the daemon codes against
(`api`), its simulator implementation (`sim_client`), and the synchronous guest
(`guest`) and domain-control (`control`) clients."""
