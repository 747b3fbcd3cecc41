"""QMP security commands as plain functions of a `GuestControl` (no socket)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pmemd.config import from_mapping
from pmemd.dsm import security
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.security import Security, security_step
from pmemd.qmp.control import GuestControl
from pmemd.qmp.errors import QmpError
from pmemd.qmp.security_commands import query_security, reset_security

P1 = b"\x11" * 32


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "SCRYPT_N", 1 << 4)


def control() -> tuple[GuestControl, list[int]]:
    config = from_mapping({"domid": 1, "nvdimm": [
        {"backing": "a.img", "size": "2M", "label_size": 0, "family": "msft"},
        {"backing": "b.img", "size": "2M", "label_size": 0},
    ]}, base_dir=Path("/nonexistent"))
    handlers = build_dispatcher(config, {})
    saved: list[int] = []

    async def set_serving(enabled: bool) -> None: ...

    ctl = GuestControl(config, handlers.root, handlers.dimms, {}, set_serving, emit=lambda n, d: None,
                       request_quit=lambda: None, state_files=None, save_security=saved.append)  # type: ignore[arg-type]
    return ctl, saved


def test_query_reports_state_and_counts_without_any_passphrase() -> None:
    ctl, _ = control()
    sec = ctl.dimm(1).security
    security_step(sec, 20, bytes(32) + P1)
    security_step(sec, 21, b"\x22" * 32)
    (info,) = query_security(ctl, 1)
    assert (info["state"], info["passphrase-attempts"], info["master"]["passphrase"]) == ("unlocked", 1, "factory")
    assert "11" * 8 not in repr(info)


def test_a_non_intel_dimm_has_no_security() -> None:
    ctl, _ = control()
    assert query_security(ctl, 0) == [{"slot": 0, "id": "nvdimm0", "state": "unsupported"}]
    with pytest.raises(QmpError, match="msft family"):
        reset_security(ctl, 0)


def test_reset_returns_to_factory_state_and_saves() -> None:
    ctl, saved = control()
    security_step(ctl.dimm(1).security, 20, bytes(32) + P1)
    ctl.dimm(1).security.power_on()
    assert reset_security(ctl, 1) == {}
    assert ctl.dimm(1).security == Security() and saved == [1]


def test_reset_is_refused_while_an_overwrite_runs() -> None:
    ctl, saved = control()
    security_step(ctl.dimm(1).security, 25, bytes(32))
    with pytest.raises(QmpError, match="overwrite is running"):
        reset_security(ctl, 1)
    assert saved == []
