"""Logs: JSON lines with the domid by default, console on request, refused guest input rate-limited per kind."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from pmemd.config import DsmConfig
from pmemd.daemon.frontends.xen_page import DsmPageDevice
from pmemd.process import logs


class Clock:
    """A settable monotonic clock, so rate limits are tested without waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stream():
    out = io.StringIO()
    logs.configure("json", domid=7, stream=out)
    yield out
    logs.configure("json", stream=io.StringIO())


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_domid_event_level_and_fields(stream):
    structlog.get_logger("x").info("running", nvdimms=1)
    (record,) = lines(stream)
    assert record["domid"] == 7
    assert record["event"] == "running"
    assert record["level"] == "info"
    assert record["nvdimms"] == 1
    assert "timestamp" in record


def test_console_format_is_not_json():
    out = io.StringIO()
    logs.configure("console", domid=3, stream=out)
    structlog.get_logger("x").info("running", nvdimms=1)
    text = out.getvalue()
    assert "running" in text and "nvdimms=1" in text and "domid=3" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_first_refusal_of_a_kind_is_logged(stream):
    limiter = logs.RefusalLog(clock=Clock())
    assert limiter.refused("dsm-notify", port="0xa18")
    (record,) = lines(stream)
    assert record["event"] == "refused guest input"
    assert record["kind"] == "dsm-notify"
    assert record["port"] == "0xa18"
    assert record["suppressed"] == 0


def test_a_flood_of_one_kind_logs_only_the_burst(stream):
    limiter = logs.RefusalLog(burst=5, rate=1.0, clock=Clock())
    logged = [limiter.refused("dsm-notify") for _ in range(10_000)]
    assert sum(logged) == 5
    assert len(lines(stream)) == 5
    assert limiter.counts["dsm-notify"] == 10_000


def test_after_a_quiet_period_the_next_line_reports_what_was_suppressed(stream):
    clock = Clock()
    limiter = logs.RefusalLog(burst=2, rate=0.5, clock=clock)
    for _ in range(12):
        limiter.refused("dsm-input-length")
    clock.now += 2.0  # one token back at 0.5/s
    assert limiter.refused("dsm-input-length")
    last = lines(stream)[-1]
    assert last["suppressed"] == 10
    assert last["total"] == 13


def test_kinds_are_limited_independently(stream):
    limiter = logs.RefusalLog(burst=1, clock=Clock())
    for _ in range(100):
        limiter.refused("dsm-notify")
    assert limiter.refused("dsm-invalid-input-5")
    assert [r["kind"] for r in lines(stream)] == ["dsm-notify", "dsm-invalid-input-5"]


def test_the_kind_table_is_bounded(stream):
    limiter = logs.RefusalLog(burst=1, clock=Clock())
    for i in range(logs.MAX_KINDS + 50):
        limiter.refused(f"kind-{i}")
    assert len(limiter.counts) == logs.MAX_KINDS + 1
    assert limiter.counts[logs.OTHER_KIND] == 50


def test_a_guest_hammering_the_notify_port_floods_no_log(stream):
    device = DsmPageDevice(DsmConfig("mmio", 0xFBFFF000, 0xA18), lambda page: b"\0" * 4)
    for _ in range(5_000):
        device.port_write(0xA18, 1, 0)  # wrong width: refused, no call made
    assert device.stats.bad_notifies == 5_000
    refused = [r for r in lines(stream) if r["event"] == "refused guest input"]
    assert 1 <= len(refused) <= logs.guest_refusals.burst + 1
    assert refused[0]["kind"] == "dsm-notify" and refused[0]["domid"] == 7


def test_configure_starts_a_fresh_count(stream):
    logs.refused("dsm-notify")
    logs.configure("json", domid=7, stream=stream)
    assert logs.guest_refusals.counts["dsm-notify"] == 0
