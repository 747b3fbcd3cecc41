"""The DSM dispatcher loads without trio or the file store: checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

from tests.harness.paths import REPO


def test_dispatch_modules_import_neither_trio_nor_the_file_store() -> None:
    code = (
        "import sys, pmemd.dsm.build, pmemd.dsm.dispatcher\n"
        "print(sorted(m for m in ('trio', 'pmemd.daemon.label_file') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
