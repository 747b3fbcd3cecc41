"""Process start-up for `pmemd run`: stdlib only, so it costs nothing before it has done its job.

A toolstack starts one daemon per guest and waits for it, so exec → QMP greeting and the
daemon's resident memory are what it pays per guest (`bench/startup.py`). Two things happen
here, before anything heavy is imported:

* `defer_unused_stdlib`: the libraries pmemd builds on import stdlib modules at module level
  that the daemon's paths never call — trio imports `ssl` (and with it OpenSSL, ~4 MiB
  resident) and `hmac` for TLS/DTLS streams, construct imports `pdb` for its debugger
  wrapper, structlog imports `asyncio` for its async loggers. Each is replaced by a stand-in
  module whose first attribute access really imports it, so nothing breaks if some path
  does use one; until then it costs a dictionary entry.
* the early QMP listener (`pmemd.qmp.early`), bound from the command line before the config
  module and the daemon are imported.

`main` is the `pmemd` program's entry point (console script, `python -m pmemd`): it does
both for `pmemd run`, then hands over to `pmemd.cli`.
"""

from __future__ import annotations

import importlib
import sys
import types

DEFERRED_STDLIB = ("ssl", "hmac", "idna", "pdb", "asyncio", "statistics", "decimal", "unicodedata", "tokenize",
                   "bz2", "lzma", "tempfile")
"""Imported at module level by trio, construct, structlog and pmemd.daemon.frontends.qemu_doorbell, used by
none of the `pmemd run` paths: TLS (trio), the debugger (construct's `Debugger`), asyncio
loggers (structlog), the doorbell's latency summary (statistics, only logged at teardown)."""


class _Deferred(types.ModuleType):
    """Stands in `sys.modules` for a module not imported yet; the first attribute access that
    is not import-machinery bookkeeping (`__spec__`, `__name__` are set) imports the real one,
    and every later access is forwarded to it, so holders of this object stay consistent.

    (`importlib.util.LazyLoader` cannot serve here on 3.11: a second `import X` statement reads
    `X.__spec__`, which makes a lazy module load at once.)
    """

    def __getattr__(self, attr: str) -> object:
        real = self.__dict__.get("_deferred_real")
        if real is None:
            name = self.__name__
            if sys.modules.get(name) is self:
                del sys.modules[name]
            real = importlib.import_module(name)
            self.__dict__["_deferred_real"] = real
        return getattr(real, attr)


def defer_unused_stdlib(names: tuple[str, ...] = DEFERRED_STDLIB) -> list[str]:
    """Put a `_Deferred` stand-in in `sys.modules` for each of `names` not imported yet;
    returns the names deferred."""
    import importlib.util  # after the QMP bind: it imports contextlib and more

    deferred = []
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        stand_in = _Deferred(name)
        stand_in.__spec__ = spec
        sys.modules[name] = stand_in
        deferred.append(name)
    return deferred


def prepare_run(argv: list[str]) -> object | None:
    """For `pmemd run ARGS`: bind the QMP socket (an `EarlyQmp`, or None) and defer modules."""
    if argv[:1] != ["run"]:
        return None
    from pmemd.qmp.early import bind_from_argv

    early = bind_from_argv(argv)
    defer_unused_stdlib()
    return early


def main() -> int:
    """`pmemd ARGS`: the start-up work above first, then the command line proper."""
    early = prepare_run(sys.argv[1:])
    from pmemd.cli import main as cli_main

    return cli_main(early=early)

