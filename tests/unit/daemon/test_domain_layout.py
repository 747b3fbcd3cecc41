"""`pmemd run` on real Xen refuses a config whose vCPUs or RAM contradict the domain's."""

from __future__ import annotations

import pytest

from pmemd import config
from pmemd.daemon.steps import check_domain_layout
from pmemd.xen.api import DomainInfo

MiB = 1 << 20
CFG = config.from_mapping({"domid": 3, "guest": {"lowmem": "256M", "vcpus": 2}})


def domain(lowmem: int = 256 * MiB, vcpus: int = 2) -> DomainInfo:
    return DomainInfo(3, "paused", None, None, lowmem, 0, (1 << 32) - 0xF0000000, vcpus)


def test_a_matching_domain_is_accepted() -> None:
    check_domain_layout(CFG, domain())


def test_a_vcpu_count_mismatch_names_guest_vcpus() -> None:
    with pytest.raises(config.ConfigError, match="guest.vcpus: is 2 but domain 3 has 1 vCPUs"):
        check_domain_layout(CFG, domain(vcpus=1))


def test_a_ram_mismatch_names_guest_lowmem() -> None:
    with pytest.raises(config.ConfigError, match="guest.lowmem: .*256 MiB.*512 MiB"):
        check_domain_layout(CFG, domain(lowmem=512 * MiB))
