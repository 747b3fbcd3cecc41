"""Error injection: NFIT root functions 7-9 for the guest, and the same operations for the operator.

  fn 7 inject        exactly 17 bytes (else 3); non-empty range in one SPA range, options
                     bit 0 only (else 3). The range becomes poison and is remembered as injected;
                     option bit 0 queues root Notify 0x81. Past the poison bound → 4, no change.
  fn 8 inject clear  exactly 16 bytes; non-empty range. Forgets the injected ranges in it and
                     the poison they caused — not poison the host reported beside them.
  fn 9 inject status no input; the injected ranges, as many as fit one reply (255).

`inject_error` / `clear_injected_error` are the operator's (QMP's) entry points: same effects,
errors as exceptions (`ValueError`, `PoisonLimitError`). `add_host_poison` records host bad
blocks already translated to guest SPA (`badblocks.translate_badblocks`).
Reference: linux-nfit.md §7 (ndctl needs all of 7, 8 and 9 to offer injection).
"""

from __future__ import annotations

from collections.abc import Iterable

from .call import Call, InvalidInput, Reply, Status, parse_input
from .devices import Root
from .functions import FunctionTable
from .notify import NOTIFY_HEALTH, queue_notify
from .poison import U64_LIMIT, PoisonLimitError
from .root_layouts import (
    FN_INJECT,
    FN_INJECT_CLEAR,
    FN_INJECT_STATUS,
    INJECT_OPTION_NOTIFY,
    MAX_INJECT_RECORDS,
    ROOT_REVISION,
    InjectClearInput,
    InjectInput,
    InjectStatusInput,
    InjectStatusOutput,
)
from .spa import pmem_holding


def inject_error(root: Root, address: int, length: int, *, notify: bool = False) -> None:
    """Poison [address, address + length) of guest PMEM as an injected error.

    Errors: `ValueError` if the range is empty or not inside one SPA range;
    `PoisonLimitError` if it would pass the poison bound (nothing changes then).
    """
    if pmem_holding(root.nvdimms, address, length) is None:
        raise ValueError(f"range ({address:#x}, {length:#x}) is not inside one persistent-memory SPA range")
    media = root.media
    if not (media.poison.fits(address, length) and media.injected.fits(address, length)):
        raise PoisonLimitError(f"injecting ({address:#x}, {length:#x}) would exceed the poison bound")
    media.poison.add(address, length)
    media.injected.add(address, length)
    if notify:
        queue_notify(root.pending_notifies, NOTIFY_HEALTH)


def clear_injected_error(root: Root, address: int, length: int) -> None:
    """Forget the injected ranges inside [address, address + length) and their poison.

    Errors: `ValueError` for an empty or out-of-u64 range; `PoisonLimitError` if a split would
    pass the bound (nothing changes then).
    """
    if length <= 0 or address + length > U64_LIMIT:
        raise ValueError(f"range ({address:#x}, {length:#x}) is empty or leaves the 64-bit address space")
    media = root.media
    hits = media.injected.overlapping(address, address + length)
    if not hits:
        return
    media.injected.remove(address, length)  # raises before any change
    removed: list[tuple[int, int]] = []
    try:
        for start, size in hits:
            present = media.poison.overlapping(start, start + size)
            media.poison.remove(start, size)
            removed.extend(present)
    except PoisonLimitError:
        for start, size in removed:  # re-adding merges back: the count cannot grow
            media.poison.add(start, size)
        for start, size in hits:
            media.injected.add(start, size)
        raise


def add_host_poison(root: Root, ranges: Iterable[tuple[int, int]]) -> int:
    """Record host-reported bad ranges (guest SPA, length) as poison; returns how many were added.

    Errors: `PoisonLimitError` at the bound (ranges before it stay recorded).
    """
    count = 0
    for address, length in ranges:
        root.media.poison.add(address, length)
        count += 1
    return count


def inject(call: Call, root: Root) -> Reply:
    """Fn 7: ARS error inject."""
    request = parse_input(InjectInput, call.input)
    if request.options & ~INJECT_OPTION_NOTIFY:
        raise InvalidInput(f"reserved inject options {request.options:#x}")
    try:
        inject_error(root, request.range.address, request.range.length, notify=bool(request.options & INJECT_OPTION_NOTIFY))
    except ValueError as e:
        raise InvalidInput(str(e)) from None
    except PoisonLimitError:
        return Reply.failure(Status.HARDWARE_ERROR)
    return Reply.success()


def inject_clear(call: Call, root: Root) -> Reply:
    """Fn 8: ARS error inject clear."""
    request = parse_input(InjectClearInput, call.input)
    try:
        clear_injected_error(root, request.range.address, request.range.length)
    except ValueError as e:
        raise InvalidInput(str(e)) from None
    except PoisonLimitError:
        return Reply.failure(Status.HARDWARE_ERROR)
    return Reply.success()


def inject_status(call: Call, root: Root) -> Reply:
    """Fn 9: ARS error inject status query — the injected ranges, as many as fit."""
    parse_input(InjectStatusInput, call.input)
    records = [{"address": a, "length": n} for a, n in _first(root.media.injected, MAX_INJECT_RECORDS)]
    return Reply.success(InjectStatusOutput.build({"count": len(records), "records": records}))


def register_inject_functions(table: FunctionTable[Root]) -> None:
    """Add fns 7-9 (revision 1) to the NFIT root table."""
    for function, handler in ((FN_INJECT, inject), (FN_INJECT_CLEAR, inject_clear), (FN_INJECT_STATUS, inject_status)):
        table.register(function, ROOT_REVISION, handler)


def _first(ranges: Iterable[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for pair in ranges:
        if len(out) == n:
            break
        out.append(pair)
    return out
