"""Save-file loader: a `--resume`/`xen-load-devices-state` file → device state.

Input: a save file; its trailing CRC-32 is recomputed first (when the input is long enough
to hold one), so mutations reach the records instead of stopping at the checksum.
`savefile.restore` loads it into a fresh guest's devices.
Contract: only `SaveFileError` (ALLOWED; a `ValueError` naming the file's defect), and then
the devices are unchanged; after a successful load, the devices' state saves and parses again.
"""

from __future__ import annotations

import zlib

from fuzz.contract import Finding
from fuzz.guest import CONFIG, fresh
from pmemd.daemon import savefile
from pmemd.daemon.savefile import SaveFileError

ALLOWED: tuple[type[BaseException], ...] = (SaveFileError,)


def with_crc(data: bytes) -> bytes:
    if len(data) < savefile.Header.sizeof() + 4:
        return data
    body = data[:-4]
    return body + zlib.crc32(body).to_bytes(4, "little")


def run(data: bytes) -> None:
    guest = fresh()
    root, dimms = guest.handlers.root, list(guest.handlers.dimms.values())
    before = savefile.capture(CONFIG, root, dimms)
    try:
        savefile.restore(with_crc(data), CONFIG, root, dimms)
    except SaveFileError:
        if savefile.capture(CONFIG, root, dimms) != before:
            raise Finding("a refused save file changed the devices") from None
        raise
    try:
        savefile.parse(savefile.capture(CONFIG, root, dimms), CONFIG)
    except SaveFileError as e:
        raise Finding(f"loaded state does not save and load again: {e}") from None
