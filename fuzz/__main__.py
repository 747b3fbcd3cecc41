"""`python -m fuzz [TARGET|all] [SECONDS]` (`./dev fuzz`): fuzz each target for SECONDS.

Per target: a child `python -m fuzz.engine` with the checked-in seeds (`fuzz/corpus/TARGET`,
read only) and a scratch corpus (`fuzz/.work/TARGET`, where libFuzzer adds what it finds);
then one summary line from libFuzzer's statistics and the findings written to
`fuzz/crashes/TARGET/`. Exit 1 if any target had a finding or failed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from fuzz.contract import TARGET_NAMES
from fuzz.engine import CRASHES

HERE = Path(__file__).resolve().parent
TIMEOUT_SECONDS = 10  # libFuzzer kills an input after this long (a hang the engine could not time)
MAX_LEN = {"dsm": 4 * 4096, "xs_store": 16384, "qmp": 8192}


def findings(target: str) -> set[str]:
    directory = CRASHES / target
    return {p.name for p in directory.iterdir() if p.name[0] != "."} if directory.is_dir() else set()


def fuzz_one(target: str, seconds: int) -> dict[str, object]:
    work = HERE / ".work" / target
    work.mkdir(parents=True, exist_ok=True)
    (CRASHES / target).mkdir(parents=True, exist_ok=True)
    before = findings(target)
    argv = [sys.executable, "-m", "fuzz.engine", target, f"-max_total_time={seconds}", "-print_final_stats=1",
            f"-timeout={TIMEOUT_SECONDS}", f"-max_len={MAX_LEN.get(target, 4096)}",
            f"-artifact_prefix={CRASHES / target}/", str(work), str(HERE / "corpus" / target)]
    proc = subprocess.run(argv, cwd=HERE.parent, capture_output=True, text=True, errors="replace",
                          timeout=seconds + 120)
    (HERE / ".work" / f"{target}.log").write_text(proc.stderr)
    new = sorted(findings(target) - before)
    return summarise(target, proc.returncode, proc.stderr, new)


def summarise(target: str, returncode: int, log: str, new: list[str]) -> dict[str, object]:
    rss = re.findall(r"rss: (\d+)Mb", log)
    stat = dict(re.findall(r"stat::(\w+):\s+(\d+)", log))
    return {
        "target": target,
        "exit": returncode,
        "runs": int(stat.get("number_of_executed_units", 0)),
        "inputs_per_s": int(stat.get("average_exec_per_sec", 0)),
        "exceptions": sum(1 for n in new if not n.startswith(("hang-", "timeout-"))),
        "hangs": sum(1 for n in new if n.startswith(("hang-", "timeout-"))),
        "rss_start_mb": int(rss[0]) if rss else None,
        "rss_end_mb": int(rss[-1]) if rss else None,
        "new_findings": [str(CRASHES / target / n) for n in new],
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="./dev fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="all", choices=[*TARGET_NAMES, "all"])
    parser.add_argument("seconds", nargs="?", type=int, default=60)
    args = parser.parse_args()
    failed = False
    for target in TARGET_NAMES if args.target == "all" else (args.target,):
        row = fuzz_one(target, args.seconds)
        print(json.dumps(row), flush=True)
        failed |= bool(row["exit"] or row["exceptions"] or row["hangs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
