"""The daemon notices its domain's end even when xenstored's ``@releaseDomain`` never says so:
the release raced the watch's registration, or (an embedded xenstored) no one told xenstored."""

from __future__ import annotations

import pytest
import trio

from pmemd.daemon import serve
from tests.harness.host import Host


async def test_a_domain_destroyed_after_the_watch_is_in_ends_the_daemon_without_a_release_event(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve, "RELEASE_BACKSTOP", 0.2)
    cfg = host.config()
    await host.create_domain(cfg)
    daemon = await host.start_daemon(cfg)
    watches = host.store.statistics().watches
    with trio.fail_after(5):
        while host.store.statistics().watches == watches:  # noqa: ASYNC110 - the @releaseDomain watch is not in yet
            await trio.sleep(0.01)
    await trio.sleep(0.3)  # its initial event is handled: the domain was still there
    host.hv.on_destroy.clear()  # xenstored never hears of it: no @releaseDomain fires
    host.hv.destroy_domain(host.hv.domain(cfg.domid))
    with trio.fail_after(5):
        await daemon.done.wait()
    assert daemon.guest.completed == []  # every step undone
