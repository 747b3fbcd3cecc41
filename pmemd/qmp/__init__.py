"""QMP for pmemd: QEMU's monitor protocol, so libxl and operators can drive the daemon.

Modules: `protocol` (sans-I/O core: framing, negotiation, command objects), `errors`
(error classes), `schema` (argument checks), `registry` (the command table), `control`
(the guest as commands see it, run states), `vm_commands` (QEMU's commands libxl uses),
`nvdimm_commands` (pmemd-* operator commands), `label_usage`, `events`, `server` (trio
shell, which registers the commands), `service` (the daemon step's wiring), `early` (the
socket bound at exec, stdlib only — hence nothing is imported here).
"""
