"""Two `pmemd lab` runs preparing boot files on one cold cache at once (finding 7): both get
complete files, the cache holds one copy of each, and nothing temporary is left.

The Debian tools the build calls (`apt-cache`, `apt-get download`, `dpkg -x`, `depmod`) are
small stand-ins first on PATH, producing a tiny kernel package slowly, so the build is seconds
and the two runs overlap for sure; everything else — `pmemd.lab.image.prepare`, the cache,
the initramfs from the host's busybox and ndctl — is the real code.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pmemd.lab.image import BUSYBOX, MODULES, NDCTL

VERSION = "6.1.0-99-amd64"
PACKAGE = f"linux-image-{VERSION}"
ELF = b"\x7fELF" + bytes(60)


def fake_tools(bin_dir: Path) -> None:
    """apt-cache, apt-get, dpkg and depmod that build a tiny kernel package, slowly."""
    bin_dir.mkdir()
    payload = b"MZ stub " + lzma.compress(ELF, format=lzma.FORMAT_XZ)
    scripts = {
        "apt-cache": f"print('linux-image-amd64\\n  Depends: {PACKAGE}')",
        "apt-get": f"""
            import time; time.sleep(0.5)
            open('{PACKAGE}_1_amd64.deb', 'wb').write(b'deb')""",
        "dpkg": f"""
            import sys, time
            from pathlib import Path
            deb, root = Path(sys.argv[2]), Path(sys.argv[3])
            assert deb.read_bytes() == b'deb', deb
            (root / 'boot').mkdir(parents=True)
            (root / 'boot' / 'vmlinuz-{VERSION}').write_bytes({payload!r})
            moddir = root / 'lib/modules/{VERSION}/kernel'
            moddir.mkdir(parents=True)
            for name in {list(MODULES)!r}:
                time.sleep(0.1)
                (moddir / f'{{name}}.ko').write_bytes(name.encode())""",
        "depmod": f"""
            import sys
            from pathlib import Path
            moddir = Path(sys.argv[2]) / 'lib/modules/{VERSION}'
            lines = [f'kernel/{{p.name}}:' for p in sorted((moddir / 'kernel').iterdir())]
            (moddir / 'modules.dep').write_text('\\n'.join(lines) + '\\n')
            with open(Path(sys.argv[2]).parents[1] / 'builds.log', 'a') as log:
                log.write('built\\n')""",
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body).strip() + "\n")
        path.chmod(0o755)


PREPARE = "import json; from pmemd.lab.image import prepare; b = prepare(); print(json.dumps([str(b.kernel), str(b.initramfs)]))"


@pytest.mark.skipif(not (BUSYBOX.exists() and NDCTL.exists() and shutil.which("ldd")),
                    reason="busybox-static and ndctl not installed (./dev test installs them)")
def test_two_runs_on_a_cold_cache_each_get_complete_boot_files(tmp_path: Path) -> None:
    fake_tools(tmp_path / "bin")
    cache = tmp_path / "cache"
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "PMEMD_LAB_CACHE": str(cache)}
    runs = [subprocess.Popen([sys.executable, "-c", PREPARE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in results]
    paths = [json.loads(out.splitlines()[-1]) for out, _ in results]
    assert paths[0] == paths[1]
    kernel, initramfs = (Path(p) for p in paths[0])
    assert kernel.read_bytes() == ELF
    archive = initramfs.read_bytes()
    assert archive.startswith(b"070701") and b"TRAILER!!!" in archive[-256:]
    assert (cache / "builds.log").read_text() == "built\n"
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [".lock", "builds.log", PACKAGE, kernel.name, initramfs.name])
