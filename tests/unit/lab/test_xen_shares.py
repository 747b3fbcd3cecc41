"""What dom0 gets shared beyond its read-only view of the host's /: dom0 mounts tmpfs over /tmp and
friends, so anything of the run's that lives there must come in over its own 9p share."""

from __future__ import annotations

from pathlib import Path

import pytest

from pmemd.lab import xen_run


def raw(*backings: str) -> dict:
    return {"nvdimm": [{"backing": b} for b in backings], "dsm": {}}


@pytest.fixture
def code_in(monkeypatch: pytest.MonkeyPatch):
    def place(*dirs: str) -> None:
        monkeypatch.setattr(xen_run, "_code_dirs", lambda: [Path(d) for d in dirs])
    return place


def test_a_clone_and_venv_under_tmp_are_shared_once(code_in) -> None:
    code_in("/tmp/ci/.venv", "/tmp/ci")
    assert xen_run._shares(Path("/work/lab"), [raw("/work/lab/nv0.img")]) == [Path("/tmp/ci")]


def test_code_dom0_can_already_see_is_not_shared(code_in) -> None:
    code_in("/work/main/.venv", "/work/main")
    assert xen_run._shares(Path("/work/lab"), [raw("/work/lab/nv0.img")]) == []


def test_backing_directories_outside_the_work_directory_are_shared(code_in) -> None:
    code_in("/work/main/.venv", "/work/main")
    assert xen_run._shares(Path("/work/lab"), [raw("/srv/a/nv0.img", "/srv/a/b/nv1.img")]) == [Path("/srv/a")]


@pytest.mark.parametrize("path", ["/tmp", "/tmp/x", "/run/user/0/x", "/var/lib/xen/y"])
def test_paths_under_a_dom0_tmpfs_are_hidden(path: str) -> None:
    assert xen_run._hidden_in_dom0(Path(path))


@pytest.mark.parametrize("path", ["/tmpx/y", "/work/main", "/var/lib/other"])
def test_other_paths_are_visible(path: str) -> None:
    assert not xen_run._hidden_in_dom0(Path(path))
