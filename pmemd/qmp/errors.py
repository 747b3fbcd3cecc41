"""QMP errors, as the wire names them, and the local/remote split.

    Exception
     └── QmpError                 an error reply: {"error": {"class", "desc"}}
          ├── class GenericError      bad JSON, bad command object, bad arguments, failed command
          ├── class CommandNotFound   unknown command, or a command in the wrong negotiation phase
          └── class DeviceNotFound    an NVDIMM slot the guest does not have

`QmpError` is what the peer (or a failed command) caused: it becomes a reply and the
connection goes on. A bug of ours is any other exception; the shell answers it with a
GenericError too and logs it, so no client input ends the daemon.
Reference: QEMU docs/interop/qmp-spec, "Error"; qapi/error.json (ErrorClass).
"""

from __future__ import annotations

from enum import Enum


class ErrorClass(str, Enum):
    """The `class` member of an error reply (QEMU's `QapiErrorClass`, the subset we raise)."""

    GENERIC_ERROR = "GenericError"
    COMMAND_NOT_FOUND = "CommandNotFound"
    DEVICE_NOT_FOUND = "DeviceNotFound"


class QmpError(Exception):
    """An error reply to send: `error_class` and a human-readable `desc`."""

    def __init__(self, desc: str, error_class: ErrorClass = ErrorClass.GENERIC_ERROR) -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def as_wire(self) -> dict[str, str]:
        return {"class": self.error_class.value, "desc": self.desc}


def command_not_found(desc: str) -> QmpError:
    return QmpError(desc, ErrorClass.COMMAND_NOT_FOUND)


def device_not_found(desc: str) -> QmpError:
    return QmpError(desc, ErrorClass.DEVICE_NOT_FOUND)
