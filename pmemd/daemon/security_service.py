"""DIMM security beyond the pure state machine: the security files and the overwriter.

Security files: one per Intel DIMM, `<backing>.pmemd-security` beside its backing file
(the passphrase belongs to the DIMM's media, not to a domid), holding the `Security` blob
(kind b"SECU": salted scrypt digests, never a passphrase). A daemon start is the DIMM's
power-on: the saved state is loaded and `Security.power_on` locks a DIMM that has a
passphrase, thaws a frozen one and clears the attempt counts. The file is rewritten
(`atomic.HeldFile`, durable before the guest sees the reply) after every security call
that may change it (fns 20-25, 27, 28), when an overwrite finishes and after a QMP reset.
A corrupt or newer file stops the start-up (`StateFormatError` naming it): a DIMM must not
come up unlocked because its passphrase could not be read.

The overwriter: fn 25 only marks the overwrite running; `SecurityService.run` zeroes the
DIMM's PMEM in `OVERWRITE_CHUNK` pieces (a trio checkpoint after each, so other calls are
served meanwhile; progress in `Security.overwrite_progress`), makes it durable, zeroes the
label area through the label store (durable per write), then `finish_overwrite`, which
function 26 reports. An overwrite found running at start-up (the daemon stopped mid-way)
starts again from the beginning.

While a DIMM's media is refused (locked, or being overwritten) `DsmEffects.publish_poison`
hands its whole SPA range to the hypervisor as poison on the Xen transport, so a guest
access takes a machine check, as a locked Intel DIMM answers reads; `_DSM` fn 4 reports
"capacity locked" on both transports (`dsm.labels`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import structlog
import trio

from pmemd.config import Config, NvdimmConfig
from pmemd.dsm.call import Call
from pmemd.dsm.devices import Dimm, slot_to_handle
from pmemd.dsm.label_store import LabelStore
from pmemd.dsm.security import (
    FN_GET_SECURITY_STATE,
    FN_QUERY_OVERWRITE,
    SECURITY_FUNCTIONS,
    Overwrite,
    Security,
)
from pmemd.dsm.state_blob import StateFormatError

from .atomic import HeldFile

log = structlog.get_logger("pmemd.security")

SECURITY_SUFFIX = ".pmemd-security"
OVERWRITE_CHUNK = 4 << 20
LABEL_CHUNK = 64 << 10
SAVED_FUNCTIONS = frozenset(SECURITY_FUNCTIONS) - {FN_GET_SECURITY_STATE, FN_QUERY_OVERWRITE}


def security_file_path(nvdimm: NvdimmConfig) -> Path:
    return nvdimm.backing.with_name(nvdimm.backing.name + SECURITY_SUFFIX)


def load_security(path: Path) -> Security | None:
    """The saved state at `path` with a power cycle applied; None when there is no file yet.

    Errors: `StateFormatError` naming the file.
    """
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        security = Security.from_bytes(blob)
    except StateFormatError as e:
        raise StateFormatError(f"security file {path}: {e}") from None
    security.power_on()
    return security


class SecurityService:
    """One guest's security files and overwriter; see the module docstring."""

    def __init__(self, dimms: Mapping[int, Dimm], labels: Mapping[int, LabelStore],
                 files: Mapping[int, HeldFile]) -> None:
        self.dimms = dimms
        self.labels = labels
        self.files = files
        self._by_handle = {slot_to_handle(slot): slot for slot in files}
        self._send, self._receive = trio.open_memory_channel[int](len(files) or 1)
        self._overwriting: set[int] = set()
        self.media_changed: list[Callable[[], None]] = []  # after an overwrite ends (poison to republish)

    def save(self, slot: int) -> None:
        """Rewrite `slot`'s security file (durable on return)."""
        self.files[slot].write(self.dimms[slot].security.to_bytes())

    def after_call(self, call: Call) -> None:
        """A dispatcher observer: save after a state-changing call, start a requested overwrite."""
        slot = self._by_handle.get(call.handle)
        if slot is None or call.function not in SAVED_FUNCTIONS:
            return
        try:
            self.save(slot)
        except OSError as e:  # the reply is out already; the next start sees the previous state
            log.error("security state not saved", slot=slot, error=str(e))
        self.wake(slot)

    def wake_all(self) -> None:
        """After a device-state load: start every overwrite the loaded state has in flight."""
        for slot in self.files:
            self.wake(slot)

    def wake(self, slot: int) -> None:
        """Start `slot`'s overwrite if one is requested and not yet under way."""
        if self.dimms[slot].security.overwrite is Overwrite.RUNNING and slot not in self._overwriting:
            self._overwriting.add(slot)
            self._send.send_nowait(slot)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve overwrite requests until cancelled; restarts those found running at start-up."""
        async with trio.open_nursery() as nursery:
            self.wake_all()
            task_status.started()
            async for slot in self._receive:
                nursery.start_soon(self._overwrite, slot)

    async def _overwrite(self, slot: int) -> None:
        dimm = self.dimms[slot]
        store = dimm.pmem
        try:
            if store is None:
                raise RuntimeError("no PMEM store")
            started = trio.current_time()
            log.info("overwrite started", slot=slot, bytes=store.size)
            for offset in range(0, store.size, OVERWRITE_CHUNK):
                store.zero(offset, min(OVERWRITE_CHUNK, store.size - offset))
                dimm.security.overwrite_progress = min(1.0, (offset + OVERWRITE_CHUNK) / store.size)
                await trio.lowlevel.checkpoint()
            store.flush()
            labels = self.labels.get(slot)
            if labels is not None and labels.writable:
                for offset in range(0, labels.size, LABEL_CHUNK):
                    labels.write(offset, bytes(min(LABEL_CHUNK, labels.size - offset)))
                    await trio.lowlevel.checkpoint()
            dimm.security.finish_overwrite()
            self.save(slot)
            log.info("overwrite complete", slot=slot, seconds=round(trio.current_time() - started, 3))
        except Exception:
            log.exception("overwrite failed", slot=slot)  # stays running: fn 26 keeps saying "in progress"
        finally:
            self._overwriting.discard(slot)
            for callback in list(self.media_changed):
                try:
                    callback()
                except Exception:
                    log.exception("media-changed callback failed")


@contextlib.contextmanager
def open_security_files(config: Config, dimms: Mapping[int, Dimm]) -> Iterator[dict[int, HeldFile]]:
    """Load every Intel DIMM's saved security state (power-on) and hold its file open."""
    files: dict[int, HeldFile] = {}
    try:
        for nvdimm in config.nvdimms:
            if nvdimm.family != "intel":
                continue
            path = security_file_path(nvdimm)
            saved = load_security(path)
            if saved is not None:
                dimms[nvdimm.slot].security = saved
                log.info("security state loaded", slot=nvdimm.slot, locked=saved.locked,
                         overwrite=saved.overwrite.name.lower())
            files[nvdimm.slot] = HeldFile(path)
            if saved is None:
                files[nvdimm.slot].write(dimms[nvdimm.slot].security.to_bytes())
        yield files
    finally:
        for held in files.values():
            held.close()
