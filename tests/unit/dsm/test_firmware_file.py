"""The firmware file: saved after each call that changed firmware state, power-cycled at the next start."""

from __future__ import annotations

from pathlib import Path

import pytest
from construct import Int8ul, Int32ul

from pmemd.config import Config, from_mapping
from pmemd.daemon.firmware_file import firmware_file_path, open_firmware_file
from pmemd.dsm.build import DsmHandlers, build_dispatcher
from pmemd.dsm.firmware import INITIAL_VERSION, MAX_SEND_LEN, firmware_file_bytes, parse_firmware_file
from pmemd.dsm.firmware_image import build_image
from pmemd.dsm.page import decode_reply, encode_request
from pmemd.dsm.state_blob import StateFormatError

NEW = 0x0000_0003_0000_0001
IMAGE = build_image(NEW, b"payload" * 100)
DIMM = 1


def config(tmp_path: Path, **dsm: str) -> Config:
    return from_mapping({"domid": 1, "dsm": dsm, "nvdimm": [{"backing": "nv0.img", "size": "2M"}]}, base_dir=tmp_path)


def call(h: DsmHandlers, function: int, data: bytes = b"", revision: int = 2) -> int:
    return Int32ul.parse(decode_reply(h.dispatcher.dispatch(encode_request(DIMM, revision, function, data)))[:4])


def stage(h: DsmHandlers) -> None:
    out = decode_reply(h.dispatcher.dispatch(encode_request(DIMM, 2, 13)))
    context = Int32ul.parse(out[4:8])
    for offset in range(0, len(IMAGE), MAX_SEND_LEN):
        chunk = IMAGE[offset:offset + MAX_SEND_LEN]
        assert call(h, 14, Int32ul.build(context) + Int32ul.build(offset) + Int32ul.build(len(chunk)) + chunk) == 0
    assert call(h, 15, bytes(4) + Int32ul.build(context)) == 0
    assert call(h, 16, Int32ul.build(context)) == 0


def test_the_file_sits_beside_the_first_backing_file(tmp_path: Path) -> None:
    assert firmware_file_path(config(tmp_path)) == tmp_path / "nv0.img.pmemd-firmware"


def test_with_a_state_file_configured_it_sits_beside_it(tmp_path: Path) -> None:
    assert firmware_file_path(config(tmp_path, state_file="g.state")) == tmp_path / "g.state.firmware"


def test_a_staged_image_is_saved_at_once_and_runs_after_the_next_start(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    h = build_dispatcher(cfg, {})
    with open_firmware_file(cfg, h):
        stage(h)
        saved = parse_firmware_file(firmware_file_path(cfg).read_bytes())[0]  # before any clean stop
        assert (saved.running_version, saved.staged_version) == (INITIAL_VERSION, NEW)
    fresh = build_dispatcher(cfg, {})
    with open_firmware_file(cfg, fresh):
        fw = fresh.dimms[0].firmware
        assert (fw.running_version, fw.staged_version) == (NEW, 0)


def test_arming_is_saved_and_a_restart_disarms(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    h = build_dispatcher(cfg, {})
    with open_firmware_file(cfg, h):
        assert call(h, 30, Int8ul.build(1)) == 0
        assert parse_firmware_file(firmware_file_path(cfg).read_bytes())[0].armed
    fresh = build_dispatcher(cfg, {})
    with open_firmware_file(cfg, fresh):
        assert not fresh.dimms[0].firmware.armed


def test_update_contexts_continue_across_restarts(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    contexts = []
    for _ in range(2):
        h = build_dispatcher(cfg, {})
        with open_firmware_file(cfg, h):
            contexts.append(Int32ul.parse(decode_reply(h.dispatcher.dispatch(encode_request(DIMM, 2, 13)))[4:8]))
    assert contexts[1] == contexts[0] + 1


def test_a_corrupt_file_stops_the_start_naming_it(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    path = firmware_file_path(cfg)
    path.write_bytes(firmware_file_bytes({})[:-1])
    with pytest.raises(StateFormatError, match=str(path)), open_firmware_file(cfg, build_dispatcher(cfg, {})):
        pass
