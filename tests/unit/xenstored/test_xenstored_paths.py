"""xenstored's node-name rule (C xenstored's ``is_valid_nodename``), which only the server applies."""

from __future__ import annotations

import pytest

from pmemd.xenstored.store import path_problem


@pytest.mark.parametrize("path", ["/", "/local/domain/5", "device-model/5/state", "@releaseDomain"])
def test_valid_paths_have_no_problem(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize("path", ["", "/a//b", "/a/", "/a b", "/ä", "/" + "a" * 3072])
def test_invalid_paths_are_named(path: str) -> None:
    assert path_problem(path) is not None
