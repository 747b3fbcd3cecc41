"""Intel DIMM security (fns 19-28): every transition and every refusal with its exact status."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pmemd.config import from_mapping
from pmemd.dsm import security
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.devices import slot_to_handle
from pmemd.dsm.label_store import MemoryLabelStore
from pmemd.dsm.labels import CAPACITY_LOCKED
from pmemd.dsm.page import decode_reply, encode_request
from pmemd.dsm.pmem_store import MemoryPmemStore
from pmemd.dsm.security import (
    ATTEMPT_LIMIT,
    EXT_MASTER_ENABLED,
    EXT_MASTER_PLIMIT,
    STATE_ENABLED,
    STATE_FROZEN,
    STATE_LOCKED,
    STATE_OVERWRITE,
    STATE_PLIMIT,
    Erase,
    Overwrite,
    Security,
    StateOutput,
    security_step,
)
from pmemd.dsm.security import SecurityStatus as S
from pmemd.dsm.state_blob import StateFormatError

P1, P2, P3 = b"\x11" * 32, b"\x22" * 32, b"\x33" * 32
ZERO = bytes(32)
MASTER = b"\x44" * 32


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real cost (N = 2^14) is bench/security.py's; the rules do not depend on it."""
    monkeypatch.setattr(security, "SCRYPT_N", 1 << 4)


def step(sec: Security, function: int, payload: bytes = b"") -> int:
    return security_step(sec, function, payload).status


def state(sec: Security) -> tuple[int, int]:
    """(state, extended state) as function 19 reports them."""
    outcome = security_step(sec, 19, b"")
    assert outcome.status == S.SUCCESS and len(outcome.output) == 8
    parsed = StateOutput.parse(outcome.output)
    return parsed.state, parsed.extended_state


def enabled(passphrase: bytes = P1) -> Security:
    sec = Security()
    assert step(sec, 20, ZERO + passphrase) == S.SUCCESS
    return sec


def locked(passphrase: bytes = P1) -> Security:
    sec = enabled(passphrase)
    sec.power_on()
    return sec


# -- 19: get security state -------------------------------------------------------------


def test_fresh_dimm_is_disabled_with_master_enabled() -> None:
    assert state(Security()) == (0, EXT_MASTER_ENABLED)


def test_get_state_with_input_is_invalid() -> None:
    assert step(Security(), 19, b"\0") == S.INVALID_INPUT


# -- 20: set passphrase -------------------------------------------------------------------


def test_set_passphrase_from_disabled_needs_the_zero_passphrase_and_enables() -> None:
    assert state(enabled())[0] == STATE_ENABLED


def test_set_passphrase_replaces_the_passphrase() -> None:
    sec = enabled(P1)
    assert step(sec, 20, P1 + P2) == S.SUCCESS
    assert step(sec, 21, P1) == S.INVALID_PASSPHRASE
    assert step(sec, 21, P2) == S.SUCCESS


def test_set_passphrase_with_wrong_old_is_refused_and_counted() -> None:
    sec = enabled(P1)
    assert step(sec, 20, P3 + P2) == S.INVALID_PASSPHRASE
    assert sec.user_attempts == 1
    assert step(sec, 21, P1) == S.SUCCESS  # unchanged


def test_replayed_set_passphrase_is_a_wrong_old_passphrase() -> None:
    sec = enabled(P1)
    assert step(sec, 20, ZERO + P1) == S.INVALID_PASSPHRASE


def test_set_passphrase_to_zeros_is_invalid_input() -> None:
    assert step(Security(), 20, ZERO + ZERO) == S.INVALID_INPUT


def test_set_passphrase_when_locked_is_invalid_state() -> None:
    assert step(locked(), 20, P1 + P2) == S.INVALID_STATE


@pytest.mark.parametrize("length", [0, 32, 63, 65])
def test_set_passphrase_of_wrong_length_is_invalid_input(length: int) -> None:
    assert step(Security(), 20, bytes(length)) == S.INVALID_INPUT


# -- 21: disable --------------------------------------------------------------------------


def test_disable_returns_to_disabled() -> None:
    sec = enabled()
    assert step(sec, 21, P1) == S.SUCCESS
    assert state(sec)[0] == 0


def test_disable_when_disabled_is_invalid_state() -> None:
    assert step(Security(), 21, ZERO) == S.INVALID_STATE


def test_disable_when_locked_is_invalid_state() -> None:
    assert step(locked(), 21, P1) == S.INVALID_STATE


def test_disable_with_wrong_passphrase_is_refused() -> None:
    assert step(enabled(), 21, P2) == S.INVALID_PASSPHRASE


def test_replayed_disable_is_invalid_state() -> None:
    sec = enabled()
    step(sec, 21, P1)
    assert step(sec, 21, P1) == S.INVALID_STATE


# -- 22: unlock, power-on -----------------------------------------------------------------


def test_power_on_locks_a_dimm_with_a_passphrase() -> None:
    assert state(locked())[0] == STATE_ENABLED | STATE_LOCKED


def test_power_on_leaves_a_disabled_dimm_unlocked() -> None:
    sec = Security()
    sec.power_on()
    assert state(sec)[0] == 0 and not sec.media_refused


def test_unlock_with_the_passphrase_unlocks() -> None:
    sec = locked()
    assert sec.media_refused
    assert step(sec, 22, P1) == S.SUCCESS
    assert state(sec)[0] == STATE_ENABLED and not sec.media_refused


def test_unlock_with_wrong_passphrase_stays_locked() -> None:
    sec = locked()
    assert step(sec, 22, P2) == S.INVALID_PASSPHRASE
    assert state(sec)[0] == STATE_ENABLED | STATE_LOCKED


def test_replayed_unlock_is_invalid_state() -> None:
    sec = locked()
    step(sec, 22, P1)
    assert step(sec, 22, P1) == S.INVALID_STATE


def test_unlock_when_disabled_is_invalid_state() -> None:
    assert step(Security(), 22, ZERO) == S.INVALID_STATE


@pytest.mark.parametrize("length", [0, 31, 33])
def test_unlock_of_wrong_length_is_invalid_input(length: int) -> None:
    assert step(locked(), 22, bytes(length)) == S.INVALID_INPUT


# -- attempt limit ------------------------------------------------------------------------


def exhaust(sec: Security, function: int = 22) -> None:
    for _ in range(ATTEMPT_LIMIT):
        assert step(sec, function, P3) == S.INVALID_PASSPHRASE


def test_attempt_limit_sets_plimit_and_refuses_even_the_right_passphrase() -> None:
    sec = locked()
    exhaust(sec)
    assert state(sec)[0] == STATE_ENABLED | STATE_LOCKED | STATE_PLIMIT
    assert step(sec, 22, P1) == S.INVALID_STATE


def test_a_right_passphrase_before_the_limit_resets_the_count() -> None:
    sec = locked()
    for _ in range(ATTEMPT_LIMIT - 1):
        step(sec, 22, P3)
    assert step(sec, 22, P1) == S.SUCCESS
    assert sec.user_attempts == 0


def test_power_on_clears_the_attempt_limit() -> None:
    sec = locked()
    exhaust(sec)
    sec.power_on()
    assert step(sec, 22, P1) == S.SUCCESS


# -- 23: freeze ---------------------------------------------------------------------------


def test_freeze_sets_frozen_and_blocks_changes() -> None:
    sec = enabled()
    assert step(sec, 23) == S.SUCCESS
    assert state(sec)[0] == STATE_ENABLED | STATE_FROZEN
    assert step(sec, 20, P1 + P2) == S.INVALID_STATE
    assert step(sec, 21, P1) == S.INVALID_STATE
    assert step(sec, 24, P1) == S.INVALID_STATE
    assert step(sec, 25, P1) == S.INVALID_STATE
    assert step(sec, 27, ZERO + MASTER) == S.INVALID_STATE
    assert step(sec, 28, ZERO) == S.INVALID_STATE


def test_freeze_when_disabled_is_invalid_state() -> None:
    assert step(Security(), 23) == S.INVALID_STATE


def test_replayed_freeze_succeeds() -> None:
    sec = enabled()
    step(sec, 23)
    assert step(sec, 23) == S.SUCCESS


def test_freeze_with_input_is_invalid() -> None:
    assert step(enabled(), 23, b"\0") == S.INVALID_INPUT


def test_power_on_thaws() -> None:
    sec = enabled()
    step(sec, 23)
    sec.power_on()
    step(sec, 22, P1)
    assert step(sec, 21, P1) == S.SUCCESS


# -- 24: secure erase ---------------------------------------------------------------------


def test_secure_erase_with_passphrase_disables_and_asks_for_a_crypto_erase() -> None:
    sec = enabled()
    outcome = security_step(sec, 24, P1)
    assert (outcome.status, outcome.erase) == (S.SUCCESS, Erase.CRYPTO)
    assert state(sec) == (0, EXT_MASTER_ENABLED)


def test_secure_erase_when_disabled_takes_the_zero_passphrase() -> None:
    assert security_step(Security(), 24, ZERO).erase is Erase.CRYPTO


def test_secure_erase_with_wrong_passphrase_erases_nothing() -> None:
    outcome = security_step(enabled(), 24, P2)
    assert (outcome.status, outcome.erase) == (S.INVALID_PASSPHRASE, None)


def test_replayed_secure_erase_is_a_wrong_passphrase() -> None:
    sec = enabled()
    step(sec, 24, P1)
    assert step(sec, 24, P1) == S.INVALID_PASSPHRASE


def test_secure_erase_resets_the_master_passphrase_to_zeros() -> None:
    sec = Security()
    step(sec, 27, ZERO + MASTER)
    step(sec, 24, ZERO)
    assert step(sec, 28, ZERO) == S.SUCCESS


# -- 25/26: overwrite ---------------------------------------------------------------------


def test_query_overwrite_without_one_is_a_sequence_error() -> None:
    assert step(Security(), 26) == S.OVERWRITE_SEQUENCE_ERROR


def test_overwrite_runs_until_finished_then_reports_success_once() -> None:
    sec = enabled()
    outcome = security_step(sec, 25, P1)
    assert (outcome.status, outcome.erase) == (S.SUCCESS, Erase.OVERWRITE)
    assert state(sec)[0] & STATE_OVERWRITE and sec.media_refused
    assert step(sec, 26) == S.OVERWRITE_IN_PROGRESS
    sec.finish_overwrite()
    assert step(sec, 26) == S.SUCCESS
    assert step(sec, 26) == S.OVERWRITE_SEQUENCE_ERROR
    assert state(sec)[0] == STATE_ENABLED  # the passphrase survives an overwrite (nfit_test)


def test_overwrite_while_running_is_invalid_state() -> None:
    sec = Security()
    step(sec, 25, ZERO)
    assert step(sec, 25, ZERO) == S.INVALID_STATE


def test_overwrite_running_refuses_every_change() -> None:
    sec = enabled()
    step(sec, 25, P1)
    for function, payload in ((20, P1 + P2), (21, P1), (23, b""), (24, P1), (27, ZERO + MASTER), (28, ZERO)):
        assert step(sec, function, payload) == S.INVALID_STATE, function


def test_overwrite_with_wrong_passphrase_is_refused() -> None:
    assert security_step(enabled(), 25, P2) == security.Outcome(S.INVALID_PASSPHRASE)


def test_overwrite_running_at_power_on_keeps_running() -> None:
    sec = Security()
    step(sec, 25, ZERO)
    sec.power_on()
    assert sec.overwrite is Overwrite.RUNNING


def test_unreported_overwrite_is_forgotten_at_power_on() -> None:
    sec = Security()
    step(sec, 25, ZERO)
    sec.finish_overwrite()
    sec.power_on()
    assert step(sec, 26) == S.OVERWRITE_SEQUENCE_ERROR


# -- 27/28: master passphrase -------------------------------------------------------------


def test_set_master_from_the_factory_zero_passphrase() -> None:
    sec = Security()
    assert step(sec, 27, ZERO + MASTER) == S.SUCCESS
    assert step(sec, 28, ZERO) == S.INVALID_PASSPHRASE
    assert sec.master_attempts == 1


def test_master_erase_disables_user_passphrase_and_unlocks() -> None:
    sec = locked()
    outcome = security_step(sec, 28, ZERO)
    assert (outcome.status, outcome.erase) == (S.SUCCESS, Erase.CRYPTO)
    assert state(sec) == (0, EXT_MASTER_ENABLED) and not sec.media_refused


def test_master_functions_without_master_are_not_supported() -> None:
    sec = Security(master_enabled=False)
    assert state(sec) == (0, 0)
    assert step(sec, 27, ZERO + MASTER) == S.NOT_SUPPORTED
    assert step(sec, 28, ZERO) == S.NOT_SUPPORTED


def test_master_attempt_limit_sets_the_extended_bit() -> None:
    sec = Security()
    exhaust(sec, 28)
    assert state(sec)[1] == EXT_MASTER_ENABLED | EXT_MASTER_PLIMIT
    assert step(sec, 28, ZERO) == S.INVALID_STATE


def test_set_master_to_zeros_is_invalid_input() -> None:
    assert step(Security(), 27, ZERO + ZERO) == S.INVALID_INPUT


@pytest.mark.parametrize("function", [18, 29, 0, 31])
def test_functions_outside_19_to_28_are_not_supported(function: int) -> None:
    assert step(Security(), function) == S.NOT_SUPPORTED


# -- saved form ---------------------------------------------------------------------------


def test_saved_state_round_trips_exactly() -> None:
    sec = locked()
    step(sec, 22, P3)
    step(sec, 27, ZERO + MASTER)
    copy = Security.from_bytes(sec.to_bytes())
    assert state(copy) == state(sec) and copy.user_attempts == 1
    assert step(copy, 22, P1) == S.SUCCESS
    assert step(copy, 28, MASTER) == S.SUCCESS


def test_saved_state_holds_no_passphrase() -> None:
    sec = enabled(P1)
    step(sec, 27, ZERO + MASTER)
    blob = sec.to_bytes()
    assert P1 not in blob and MASTER not in blob
    assert "11" * 4 not in repr(sec)


def test_corrupt_saved_state_is_refused() -> None:
    blob = bytearray(Security().to_bytes())
    blob[20] ^= 1
    with pytest.raises(StateFormatError):
        Security.from_bytes(bytes(blob))


# -- through the dispatcher ---------------------------------------------------------------

PMEM = 2 << 20
LABELS = 128 << 10


def guest(pmem_fill: int = 0xAB):
    config = from_mapping(
        {"domid": 1, "nvdimm": [{"backing": "nv0.img", "size": PMEM + LABELS, "label_size": LABELS}]},
        base_dir=Path("/nonexistent"),
    )
    store = MemoryPmemStore(PMEM, fill=pmem_fill)
    handlers = build_dispatcher(config, {0: MemoryLabelStore(LABELS)}, pmem={0: store})
    return handlers, store


def dsm(handlers, function: int, payload: bytes = b"", revision: int = 2) -> int:
    reply = decode_reply(handlers.dispatcher.dispatch(encode_request(slot_to_handle(0), revision, function, payload)))
    return int.from_bytes(reply[:4], "little")


def test_revision_2_mask_offers_all_ten_security_functions_with_a_pmem_store() -> None:
    handlers, _ = guest()
    reply = decode_reply(handlers.dispatcher.dispatch(encode_request(slot_to_handle(0), 2, 0)))
    mask = int.from_bytes(reply, "little")
    assert mask >> 19 & 0x3FF == 0x3FF


def test_security_functions_are_not_served_at_revision_1() -> None:
    handlers, _ = guest()
    assert dsm(handlers, 19, revision=1) == S.NOT_SUPPORTED


def test_crypto_erase_zeroes_the_pmem_and_flushes() -> None:
    handlers, store = guest()
    assert dsm(handlers, 24, ZERO) == S.SUCCESS
    assert store.data == bytes(PMEM) and store.flushes == 1


def test_wrong_passphrase_erase_leaves_the_pmem() -> None:
    handlers, store = guest()
    assert dsm(handlers, 24, P1) == S.INVALID_PASSPHRASE
    assert store.data == b"\xab" * PMEM


def test_locked_dimm_reports_capacity_locked_on_label_size() -> None:
    handlers, _ = guest()
    dsm(handlers, 20, ZERO + P1)
    handlers.dimms[0].security.power_on()
    assert dsm(handlers, 4, revision=1) == CAPACITY_LOCKED
    assert dsm(handlers, 22, P1) == S.SUCCESS
    assert dsm(handlers, 4, revision=1) == S.SUCCESS


# -- fuzz: any input, a defined status, and the machine stays consistent -----------------

STATUSES = set(S)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(17, 30), st.one_of(
    st.sampled_from([ZERO, P1, ZERO + P1, P1 + P2, P2 + ZERO, b""]), st.binary(max_size=70)))))
def test_any_call_sequence_answers_defined_statuses(calls: list[tuple[int, bytes]]) -> None:
    sec = Security()
    for function, payload in calls:
        outcome = security_step(sec, function, payload)
        assert outcome.status in STATUSES
        assert outcome.erase is None or outcome.status == S.SUCCESS
        assert not (sec.locked and not sec.enabled)
        Security.from_bytes(sec.to_bytes())

