"""One fuzz target under atheris (libFuzzer): `python -m fuzz.engine TARGET [libFuzzer flags] DIRS`.

The modules under test are imported inside `atheris.instrument_imports`, so libFuzzer sees
Python line and comparison coverage. An input that breaks the target's contract, or takes
more than `HANG_SECONDS` of CPU, is written to `fuzz/crashes/TARGET/` (`crash-<sha1>` /
`hang-<sha1>`) and reported on stderr; fuzzing then goes on, so one run counts every distinct
finding. `fuzz.__main__` runs this and summarises libFuzzer's statistics.
"""

from __future__ import annotations

import hashlib
import sys
import time
import traceback
from pathlib import Path

import atheris

from fuzz.contract import fast_kdf, load, quiet_logs, tripwires

HANG_SECONDS = 1.0
CRASHES = Path(__file__).resolve().parent / "crashes"


def record(target: str, kind: str, data: bytes, detail: str) -> Path:
    directory = CRASHES / target
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-{hashlib.sha1(data).hexdigest()}"
    if not path.exists():
        path.write_bytes(data)
        print(f"pmemd-fuzz: {kind} in {target}: {detail.strip()}\n  input written to {path}", file=sys.stderr, flush=True)
    return path


def main() -> None:
    name = sys.argv[1]
    quiet_logs()
    with atheris.instrument_imports(include=["pmemd", "acpi", "fuzz.targets", "fuzz.guest"]):
        target = load(name)

    def one_input(data: bytes) -> None:
        start = time.process_time()
        try:
            target.run(data)
        except target.allowed:
            pass
        except Exception:
            record(name, "crash", data, traceback.format_exc())
        spent = time.process_time() - start
        if spent > HANG_SECONDS:
            record(name, "hang", data, f"{spent:.2f} s of CPU for one input")

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    with tripwires(), fast_kdf():
        atheris.Fuzz()


if __name__ == "__main__":
    main()
