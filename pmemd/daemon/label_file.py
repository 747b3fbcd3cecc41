"""`FileLabelStore`: a DIMM's label area in the last `label_size` bytes of its backing file.

Writes are durable and atomic per call, through a one-record journal in a sidecar file
(`<backing>.labels-journal`), because a `pwrite` torn by a crash would otherwise leave a
label chunk half old, half new, and Linux would find a bad index block or label.

Write protocol (one `write` call):
  1. write the record (header, then the data) at journal offset 0, `fdatasync` the journal;
  2. `pwrite` the data in place, `fdatasync` the backing file;
  3. clear the record's magic (not synced, see below); only then does `write` return.

Record (little-endian, `JournalHeader`): magic "PMEMDLJ\\0", version u32, length u32, the
label area's start and size in the backing file (u64 each), offset in the area (u64),
a 16-byte BLAKE2b digest of the header (digest zeroed) and the data; then the data.

Recovery rule (on open): a record is *complete* when its magic, version, area geometry and
bounds are right, all `length` data bytes are there and the digest matches. A complete
record is replayed (in-place write, sync) and then cleared; anything else is torn or absent
and is ignored. Why this is enough:
  - crash before step 1 finishes: the record is torn (ignored) and the area untouched → old;
    or it did reach the disk complete → replayed → new. The call was not acknowledged, so
    either is allowed.
  - crash in step 2: the record is complete → replayed → new, whatever the torn pwrite left.
  - crash in or after step 3: replaying rewrites bytes already in place → new.
The clear need not be synced: a record that outlives its clear is the latest write, whose
data is already in place (every later in-place write first replaces the record), so a
replay is idempotent. The journal's directory entry is synced once, when it is created.

Limits: a record whose geometry no longer matches the configuration (label_size changed)
is ignored with a warning. A read-only backing file cannot be recovered and opens as is.
After an I/O error mid-write the store refuses further calls (status 4) until reopened,
because only recovery can tell what reached the disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from pathlib import Path
from types import TracebackType

import structlog
from construct import Bytes, Const, ConstructError, Int32ul, Int64ul, Struct

from pmemd.config import Config, NvdimmConfig

from .atomic import fsync_directory, write_all

log = structlog.get_logger()

JOURNAL_SUFFIX = ".labels-journal"
JOURNAL_MAGIC = b"PMEMDLJ\x00"
JOURNAL_VERSION = 1
DIGEST_SIZE = 16

JournalHeader = Struct(
    "magic" / Const(JOURNAL_MAGIC),
    "version" / Const(JOURNAL_VERSION, Int32ul),
    "length" / Int32ul,
    "area_start" / Int64ul,
    "area_size" / Int64ul,
    "offset" / Int64ul,
    "digest" / Bytes(DIGEST_SIZE),
)
"""The journal record's header; the record's data follows it."""

MAX_AREA_SIZE = 1 << 32
"""DSM offsets and the reported area size are u32."""


def journal_path(backing: Path) -> Path:
    """The sidecar journal of a backing file."""
    return backing.with_name(backing.name + JOURNAL_SUFFIX)


class LabelStoreFailed(OSError):
    """An earlier write failed midway; reopening the store recovers."""


class FileLabelStore:
    """The label area `[area_start, area_start + area_size)` of a backing file.

    Resources: holds the backing file and the journal open until `close()` (or the end of
    a `with` block). One store per backing file: two processes must not share one.
    """

    def __init__(self, backing: str | os.PathLike[str], area_start: int, area_size: int) -> None:
        if not 0 < area_size <= MAX_AREA_SIZE - 1 or area_start < 0:
            raise ValueError(f"label area [{area_start}, +{area_size}) is not addressable by u32 offsets")
        self.path = Path(backing)
        self.journal = journal_path(self.path)
        self._start = area_start
        self._size = area_size
        self._lock = threading.Lock()
        self._failed = False
        self._journal_fd: int | None = None
        self.recovered = False
        """True when opening replayed a complete journal record (a write interrupted by a crash)."""
        self._fd, self._writable = _open_backing(self.path)
        try:
            end = os.lseek(self._fd, 0, os.SEEK_END)
            if end < area_start + area_size:
                raise ValueError(f"{self.path} is {end} bytes, too short for labels ending at {area_start + area_size}")
            if self._writable:
                self._open_journal()
            if self._journal_fd is not None:
                self.recovered = self._recover()
            elif self.journal.exists():
                log.warning("label journal not replayed: backing file is read-only", journal=str(self.journal))
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_nvdimm(cls, nvdimm: NvdimmConfig) -> FileLabelStore:
        """The label area of an NVDIMM: the last `label_size` bytes of its `size`-byte backing."""
        return cls(nvdimm.backing, nvdimm.size - nvdimm.label_size, nvdimm.label_size)

    @property
    def size(self) -> int:
        return self._size

    @property
    def writable(self) -> bool:
        return self._writable

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        data = os.pread(self._fd, length, self._start + offset)
        if len(data) != length:
            raise OSError(f"short read from {self.path}: {len(data)} of {length} bytes")
        return data

    def write(self, offset: int, data: bytes) -> None:
        """Store `data` at `offset`, atomically and durably (module docstring: write protocol)."""
        if not self._writable or self._journal_fd is None:
            raise PermissionError(f"label area of {self.path} is read-only")
        self._check(offset, len(data))
        if not data:
            return
        with self._lock:
            try:
                header = _header(offset, data, self._start, self._size)
                write_all(self._journal_fd, header + data, 0)
                os.fdatasync(self._journal_fd)
                write_all(self._fd, data, self._start + offset)
                os.fdatasync(self._fd)
                self._clear_journal()
            except BaseException:
                self._failed = True
                raise

    def close(self) -> None:
        for fd in (self._journal_fd, getattr(self, "_fd", None)):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._journal_fd = None
        self._fd = -1

    def __enter__(self) -> FileLabelStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check(self, offset: int, length: int) -> None:
        if self._failed:
            raise LabelStoreFailed(f"an earlier label write to {self.path} failed; restart to recover")
        if offset < 0 or length < 0 or offset + length > self._size:
            raise ValueError(f"range [{offset}, {offset + length}) is outside the {self._size}-byte label area")

    def _open_journal(self) -> None:
        try:
            try:
                self._journal_fd = os.open(self.journal, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                fsync_directory(self.journal.parent)
            except FileExistsError:
                self._journal_fd = os.open(self.journal, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            log.warning("label journal unavailable, labels are read-only", journal=str(self.journal), error=str(e))
            self._writable = False

    def _recover(self) -> bool:
        """Replay a complete journal record, ignore a torn one (module docstring: recovery rule)."""
        assert self._journal_fd is not None
        record = self._read_record()
        if record is None:
            return False
        offset, data = record
        write_all(self._fd, data, self._start + offset)
        os.fdatasync(self._fd)
        self._clear_journal()
        log.info("label write replayed from journal", backing=str(self.path), offset=offset, length=len(data))
        return True

    def _read_record(self) -> tuple[int, bytes] | None:
        assert self._journal_fd is not None
        raw = os.pread(self._journal_fd, JournalHeader.sizeof(), 0)
        try:
            header = JournalHeader.parse(raw)
        except ConstructError:
            return None  # absent, cleared or torn
        if (header.area_start, header.area_size) != (self._start, self._size):
            log.warning(
                "label journal ignored: label area changed",
                journal=str(self.journal),
                recorded=(header.area_start, header.area_size),
                configured=(self._start, self._size),
            )
            return None
        if header.offset + header.length > self._size:
            return None
        data = os.pread(self._journal_fd, header.length, JournalHeader.sizeof())
        if len(data) != header.length:
            return None
        if _header(header.offset, data, self._start, self._size) != raw:
            return None
        return header.offset, data

    def _clear_journal(self) -> None:
        assert self._journal_fd is not None
        write_all(self._journal_fd, bytes(len(JOURNAL_MAGIC)), 0)


def open_label_stores(config: Config, stack: contextlib.ExitStack) -> dict[int, FileLabelStore]:
    """Open the label store of every NVDIMM with a label area, keyed by slot; `stack` closes them."""
    return {
        nvdimm.slot: stack.enter_context(FileLabelStore.for_nvdimm(nvdimm))
        for nvdimm in config.nvdimms
        if nvdimm.label_size
    }


def _header(offset: int, data: bytes, area_start: int, area_size: int) -> bytes:
    """The record header for `data` at `offset`, digest included."""
    fields = {"length": len(data), "area_start": area_start, "area_size": area_size, "offset": offset}
    unsigned = JournalHeader.build({**fields, "digest": bytes(DIGEST_SIZE)})
    digest = hashlib.blake2b(unsigned + data, digest_size=DIGEST_SIZE).digest()
    return JournalHeader.build({**fields, "digest": digest})


def _open_backing(path: Path) -> tuple[int, bool]:
    """Open read-write if allowed, else read-only: a read-only backing still serves reads."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC), True
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
