"""The firmware file: each Intel DIMM's running and staged firmware version, arming, last
activation result and update context, kept across daemon restarts.

Its own small file beside the guest state file (`<backing>.pmemd-firmware`, or
`<[dsm] state_file>.firmware`), opened before `--depriv` and replaced atomically
(`atomic.replace_in`, through `StateFile`) after every `_DSM` call that changed it. A daemon start
is the DIMMs' power cycle (`Firmware.power_on`): a staged version becomes the running one.
The format is `pmemd.dsm.firmware`'s (`firmware_file_bytes`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import structlog

from acpi.dsm_buffer import INTEL_BUS_HANDLE
from pmemd.config import Config
from pmemd.dsm.build import DsmHandlers
from pmemd.dsm.call import Call
from pmemd.dsm.devices import slot_to_handle
from pmemd.dsm.dispatcher import Phase
from pmemd.dsm.firmware import Firmware, firmware_file_bytes, parse_firmware_file
from pmemd.dsm.firmware_functions import FN_ACTIVATE_ARM, FN_FINISH_QUERY, FN_START_UPDATE
from pmemd.dsm.state_blob import StateFormatError

from .state_file import STATE_SUFFIX, StateFile, state_file_path

log = structlog.get_logger("pmemd.firmware")

FIRMWARE_SUFFIX = ".pmemd-firmware"


def firmware_file_path(config: Config) -> Path | None:
    """Beside the state file: `<[dsm] state_file>.firmware`, else `<first backing>.pmemd-firmware`."""
    state = state_file_path(config)
    if state is None:
        return None
    if config.dsm.state_file is not None:
        return state.with_name(state.name + ".firmware")
    return state.with_name(state.name.removesuffix(STATE_SUFFIX) + FIRMWARE_SUFFIX)


class FirmwareFile:
    """The open file (a `StateFile`: it outlives `--depriv`); `save` rewrites it when it changed."""

    def __init__(self, path: Path, firmware: Mapping[int, Firmware]) -> None:
        self.path = path
        self.firmware = firmware
        self._file = StateFile(path)
        self._saved: bytes | None = None

    def load(self) -> None:
        """Restore each DIMM's saved firmware (a new, empty file: nothing). Errors: `StateFormatError`."""
        blob = self._file.read()
        if not blob:
            return
        saved = parse_firmware_file(blob)
        for slot, firmware in self.firmware.items():
            if slot in saved:
                restored = saved[slot]
                firmware.running_version, firmware.staged_version = restored.running_version, restored.staged_version
                firmware.armed, firmware.result = restored.armed, restored.result
                firmware.last_context = restored.last_context
        self._saved = blob

    def save(self) -> None:
        """Durably replace the file if any DIMM's saved firmware changed since the last save."""
        blob = firmware_file_bytes(self.firmware)
        if blob != self._saved:
            self._file.write(blob)
            self._saved = blob

    def close(self) -> None:
        self._file.close()


SAVED_BY = frozenset({FN_START_UPDATE, FN_FINISH_QUERY, FN_ACTIVATE_ARM})
"""DIMM functions that change what the file holds: the context counter, the staged version, arming."""


def _changes_firmware(call: Call, dimm_handles: frozenset[int]) -> bool:
    return call.handle == INTEL_BUS_HANDLE or (call.handle in dimm_handles and call.function in SAVED_BY)


@contextlib.contextmanager
def open_firmware_file(config: Config, handlers: DsmHandlers) -> Iterator[FirmwareFile | None]:
    """Load, power on (a staged version starts running) and save; then save after each call
    that changed firmware state, and once more on the way out. None without NVDIMMs.

    Errors: `StateFormatError` (naming the file) for a corrupt or newer file.
    """
    path = firmware_file_path(config)
    if path is None:
        yield None
        return
    intel = {slot: d.firmware for slot, d in handlers.dimms.items() if d.config.family == "intel"}
    handles = frozenset(slot_to_handle(slot) for slot in intel)
    file = FirmwareFile(path, intel)
    try:
        try:
            file.load()
        except StateFormatError as e:
            raise StateFormatError(f"firmware file {path}: {e}") from None
        for firmware in intel.values():
            firmware.power_on()
        file.save()

        def after_call(call: Call) -> None:
            if not _changes_firmware(call, handles):
                return
            try:
                file.save()
            except OSError as e:  # the guest's call already succeeded: log, keep serving
                log.error("firmware state not saved", firmware_file=str(path), error=str(e))

        with handlers.dispatcher.observing(Phase.EFFECTS, after_call):
            yield file
        try:
            file.save()
        except OSError as e:
            log.error("firmware state not saved", firmware_file=str(path), error=str(e))
    finally:
        file.close()
