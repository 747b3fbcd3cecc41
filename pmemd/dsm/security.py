"""Intel DIMM security: the per-DIMM passphrase state machine behind functions 19-28.

Pure: no I/O, no clock. `security_step(state, function, payload)` is the whole machine —
one call in, a status, output bytes and the media effect out — so the DSM handlers
(`security_functions`), the unit tests and fuzzers drive the same code.

States (what function 19 reports; Linux `intel_security_flags` reads them):

    disabled   no user passphrase (the all-zero passphrase stands for "none")
    unlocked   passphrase set (state 0x02), media readable
    locked     passphrase set and 0x04: media refused until function 22 unlocks it; every
               power-on (a daemon start: `power_on`) locks a DIMM with a passphrase
    frozen     0x08: no security change until the next power-on (function 23)
    plimit     0x10: ATTEMPT_LIMIT wrong user passphrases since power-on; Linux shows it as
               "frozen"; passphrase commands answer 10 until the next power-on
    overwrite  0x40 while an overwrite (25) runs, until function 26 has reported it done
    master     extended 0x01: the master passphrase (27, 28) is enabled, factory value all
               zeros; extended 0x02: ATTEMPT_LIMIT wrong master passphrases since power-on

Checks run in this order, first hit answers: input layout (3), values (3: a new passphrase
of all zeros), master not enabled (1, fns 27/28), state (10: overwrite running, then the
function's own state rule, frozen, attempt limit), passphrase (11, counted). Success resets
that passphrase's attempt count. Function by function (nfit_test's rules, plus Intel's
locked and attempt-limit rules that nfit_test leaves out):

    19 get state        —                    status 0; extended_state u8, 3 rsvd, state u8, 3 rsvd
    20 set passphrase   old[32] new[32]      10 if locked; 11 if old is not the current one
    21 disable          passphrase[32]       10 unless unlocked with a passphrase
    22 unlock           passphrase[32]       10 unless locked
    23 freeze lock      —                    10 without a passphrase; again when frozen: 0
    24 secure erase     passphrase[32]       the current user passphrase (zeros when disabled);
                                             crypto-erases the PMEM, disables the passphrase,
                                             resets the master passphrase to zeros (nfit_test)
    25 overwrite        passphrase[32]       as 24; starts the overwrite (PMEM and labels)
    26 query overwrite  —                    0x10007 running; 0 once done (then idle); 0x20007 idle
    27 set master       old[32] new[32]      1 without master; 11 if old is not the master one
    28 master erase     passphrase[32]       1 without master; crypto-erase, user passphrase off

Passphrases are kept only as salted scrypt digests (`Sealed`), compared in constant time,
and never appear in a log record, a repr or a QMP reply.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from enum import Enum, IntEnum

from construct import Bytes, ConstructError, Container, Int8ul, Padding, Struct, Terminated

from .state_blob import StateFormatError, parse_body, unwrap, wrap

PASSPHRASE_SIZE = 32
ZERO_PASSPHRASE = bytes(PASSPHRASE_SIZE)
ATTEMPT_LIMIT = 5
"""Wrong passphrases (user, and separately master) accepted before the count expires."""

FN_GET_SECURITY_STATE = 19
FN_SET_PASSPHRASE = 20
FN_DISABLE_PASSPHRASE = 21
FN_UNLOCK_UNIT = 22
FN_FREEZE_LOCK = 23
FN_SECURE_ERASE = 24
FN_OVERWRITE = 25
FN_QUERY_OVERWRITE = 26
FN_SET_MASTER_PASSPHRASE = 27
FN_MASTER_SECURE_ERASE = 28
SECURITY_FUNCTIONS = range(FN_GET_SECURITY_STATE, FN_MASTER_SECURE_ERASE + 1)
SECURITY_REVISION = 2


class SecurityStatus(IntEnum):
    """Intel DSM status words Linux's `drivers/acpi/nfit/intel.c` tells apart."""

    SUCCESS = 0
    NOT_SUPPORTED = 1
    INVALID_INPUT = 3
    INVALID_STATE = 10
    INVALID_PASSPHRASE = 11
    OVERWRITE_IN_PROGRESS = 0x10007  # function-specific (7), extended 1
    OVERWRITE_SEQUENCE_ERROR = 0x20007  # query without an overwrite to report


STATE_ENABLED = 0x02
STATE_LOCKED = 0x04
STATE_FROZEN = 0x08
STATE_PLIMIT = 0x10
STATE_OVERWRITE = 0x40
EXT_MASTER_ENABLED = 0x01
EXT_MASTER_PLIMIT = 0x02

SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
SALT_SIZE = 16
DIGEST_SIZE = 32


class Overwrite(IntEnum):
    IDLE = 0
    RUNNING = 1
    DONE = 2  # finished, not yet reported by function 26


class Erase(Enum):
    """The media effect of a successful call, carried out by the caller."""

    CRYPTO = "crypto"  # 24, 28: the PMEM reads as zeros at once; labels are kept
    OVERWRITE = "overwrite"  # 25: zero PMEM and labels, then `finish_overwrite`


@dataclass(frozen=True)
class Sealed:
    """A passphrase as stored: scrypt(passphrase, salt). `repr` shows neither."""

    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    @classmethod
    def seal(cls, passphrase: bytes, salt: bytes | None = None) -> Sealed:
        salt = secrets.token_bytes(SALT_SIZE) if salt is None else salt
        return cls(salt, _scrypt(passphrase, salt))

    def matches(self, passphrase: bytes) -> bool:
        return hmac.compare_digest(self.digest, _scrypt(passphrase, self.salt))


def _scrypt(passphrase: bytes, salt: bytes) -> bytes:
    return hashlib.scrypt(passphrase, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=DIGEST_SIZE)


def _matches(sealed: Sealed | None, passphrase: bytes) -> bool:
    """None stands for the all-zero passphrase (no user passphrase; factory master)."""
    if sealed is None:
        return hmac.compare_digest(passphrase, ZERO_PASSPHRASE)
    return sealed.matches(passphrase)


@dataclass
class Security:
    """One DIMM's security state; fresh = disabled, master enabled with the zero passphrase."""

    user: Sealed | None = None
    master: Sealed | None = None
    master_enabled: bool = True
    locked: bool = False
    frozen: bool = False
    user_attempts: int = 0
    master_attempts: int = 0
    overwrite: Overwrite = Overwrite.IDLE
    overwrite_progress: float = 0.0  # 0..1 while running (the overwriter updates it)

    @property
    def enabled(self) -> bool:
        return self.user is not None

    @property
    def user_limit(self) -> bool:
        return self.user_attempts >= ATTEMPT_LIMIT

    @property
    def master_limit(self) -> bool:
        return self.master_attempts >= ATTEMPT_LIMIT

    @property
    def media_refused(self) -> bool:
        """The guest may not touch the PMEM: locked, or being overwritten."""
        return (self.enabled and self.locked) or self.overwrite is Overwrite.RUNNING

    def state_byte(self) -> int:
        state = 0
        if self.enabled:
            state |= STATE_ENABLED
            if self.locked:
                state |= STATE_LOCKED
            if self.frozen:
                state |= STATE_FROZEN
        if self.user_limit:
            state |= STATE_PLIMIT
        if self.overwrite is Overwrite.RUNNING:
            state |= STATE_OVERWRITE
        return state

    def extended_byte(self) -> int:
        if not self.master_enabled:
            return 0
        return EXT_MASTER_ENABLED | (EXT_MASTER_PLIMIT if self.master_limit else 0)

    def power_on(self) -> None:
        """What a power cycle does: lock a DIMM with a passphrase, thaw, reset the counts.

        An overwrite that was running stays running (the caller restarts it from the start);
        one finished but never reported is forgotten.
        """
        self.locked = self.enabled
        self.frozen = False
        self.user_attempts = self.master_attempts = 0
        if self.overwrite is Overwrite.DONE:
            self.overwrite = Overwrite.IDLE

    def finish_overwrite(self) -> None:
        """The overwriter zeroed everything: function 26 now reports success once."""
        if self.overwrite is Overwrite.RUNNING:
            self.overwrite = Overwrite.DONE
            self.overwrite_progress = 1.0

    def reset(self) -> None:
        """The operator's factory reset (QMP): no passphrases, unlocked, counts cleared."""
        if self.overwrite is Overwrite.RUNNING:
            raise ValueError("an overwrite is running")
        self.__dict__.update(Security().__dict__)

    # -- saved form --------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The versioned blob (kind b"SECU"): digests and salts, never a passphrase."""
        flags = (
            (FLAG_USER if self.user else 0)
            | (FLAG_MASTER if self.master else 0)
            | (FLAG_MASTER_ENABLED if self.master_enabled else 0)
            | (FLAG_LOCKED if self.locked else 0)
            | (FLAG_FROZEN if self.frozen else 0)
        )
        empty = Sealed(bytes(SALT_SIZE), bytes(DIGEST_SIZE))
        user, master = self.user or empty, self.master or empty
        body = SecurityBodyV1.build({
            "flags": flags, "user_attempts": min(self.user_attempts, ATTEMPT_LIMIT),
            "master_attempts": min(self.master_attempts, ATTEMPT_LIMIT), "overwrite": int(self.overwrite),
            "user_salt": user.salt, "user_digest": user.digest,
            "master_salt": master.salt, "master_digest": master.digest,
        })
        return wrap(BLOB_KIND, BLOB_VERSION, body)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Security:
        """The state a `to_bytes` blob describes, exactly (no power cycle applied).

        Errors: `StateFormatError` for a corrupt or newer blob or out-of-range values.
        """
        _, body = unwrap(BLOB_KIND, BLOB_VERSION, blob)
        b = parse_body(SecurityBodyV1, body)
        if (b.flags & ~FLAGS_ALL or b.overwrite > max(Overwrite) or b.user_attempts > ATTEMPT_LIMIT
                or b.master_attempts > ATTEMPT_LIMIT):
            raise StateFormatError("security blob holds out-of-range values")
        return cls(
            user=Sealed(b.user_salt, b.user_digest) if b.flags & FLAG_USER else None,
            master=Sealed(b.master_salt, b.master_digest) if b.flags & FLAG_MASTER else None,
            master_enabled=bool(b.flags & FLAG_MASTER_ENABLED),
            locked=bool(b.flags & FLAG_LOCKED) and bool(b.flags & FLAG_USER),
            frozen=bool(b.flags & FLAG_FROZEN),
            user_attempts=b.user_attempts,
            master_attempts=b.master_attempts,
            overwrite=Overwrite(b.overwrite),
        )


BLOB_KIND = b"SECU"
BLOB_VERSION = 1
FLAG_USER, FLAG_MASTER, FLAG_MASTER_ENABLED, FLAG_LOCKED, FLAG_FROZEN = 1, 2, 4, 8, 16
FLAGS_ALL = 31

SecurityBodyV1 = Struct(
    "flags" / Int8ul,
    "user_attempts" / Int8ul,
    "master_attempts" / Int8ul,
    "overwrite" / Int8ul,
    "user_salt" / Bytes(SALT_SIZE),
    "user_digest" / Bytes(DIGEST_SIZE),
    "master_salt" / Bytes(SALT_SIZE),
    "master_digest" / Bytes(DIGEST_SIZE),
    Terminated,
)

# -- the functions ---------------------------------------------------------------------

NoInput = Struct(Terminated)
OnePassphrase = Struct("passphrase" / Bytes(PASSPHRASE_SIZE), Terminated)
TwoPassphrases = Struct("old" / Bytes(PASSPHRASE_SIZE), "new" / Bytes(PASSPHRASE_SIZE), Terminated)
StateOutput = Struct("extended_state" / Int8ul, Padding(3), "state" / Int8ul, Padding(3))


@dataclass(frozen=True)
class Outcome:
    """What one security call answers and what the caller must do to the media."""

    status: int
    output: bytes = b""
    erase: Erase | None = None


S = SecurityStatus


def security_step(sec: Security, function: int, payload: bytes) -> Outcome:
    """Run security function `function` (19-28) with input `payload` against `sec`.

    Total: any payload gives an `Outcome` (status 3 for a malformed one); a function
    outside 19-28 answers 1. `sec` changes only as the outcome says.
    """
    step = _STEPS.get(function)
    if step is None:
        return Outcome(S.NOT_SUPPORTED)
    layout, run = step
    try:
        request = layout.parse(payload)
    except ConstructError:
        return Outcome(S.INVALID_INPUT)
    return run(sec, request)


def _get_state(sec: Security, _: Container) -> Outcome:
    out = StateOutput.build({"extended_state": sec.extended_byte(), "state": sec.state_byte()})
    return Outcome(S.SUCCESS, out)


def _state_refused(sec: Security, rule: bool) -> bool:
    """Common refusals: an overwrite running, the function's own rule, frozen, count expired."""
    return sec.overwrite is Overwrite.RUNNING or not rule or sec.frozen or sec.user_limit


def _check_user(sec: Security, passphrase: bytes) -> bool:
    if _matches(sec.user, passphrase):
        sec.user_attempts = 0
        return True
    sec.user_attempts += 1
    return False


def _check_master(sec: Security, passphrase: bytes) -> bool:
    if _matches(sec.master, passphrase):
        sec.master_attempts = 0
        return True
    sec.master_attempts += 1
    return False


def _set_passphrase(sec: Security, r: Container) -> Outcome:
    if r.new == ZERO_PASSPHRASE:
        return Outcome(S.INVALID_INPUT)
    if _state_refused(sec, not (sec.enabled and sec.locked)):
        return Outcome(S.INVALID_STATE)
    if not _check_user(sec, r.old):
        return Outcome(S.INVALID_PASSPHRASE)
    sec.user = Sealed.seal(r.new)
    sec.locked = False
    return Outcome(S.SUCCESS)


def _disable(sec: Security, r: Container) -> Outcome:
    if _state_refused(sec, sec.enabled and not sec.locked):
        return Outcome(S.INVALID_STATE)
    if not _check_user(sec, r.passphrase):
        return Outcome(S.INVALID_PASSPHRASE)
    sec.user = None
    return Outcome(S.SUCCESS)


def _unlock(sec: Security, r: Container) -> Outcome:
    if _state_refused(sec, sec.enabled and sec.locked):
        return Outcome(S.INVALID_STATE)
    if not _check_user(sec, r.passphrase):
        return Outcome(S.INVALID_PASSPHRASE)
    sec.locked = False
    return Outcome(S.SUCCESS)


def _freeze(sec: Security, _: Container) -> Outcome:
    if sec.overwrite is Overwrite.RUNNING or not sec.enabled:
        return Outcome(S.INVALID_STATE)
    sec.frozen = True
    return Outcome(S.SUCCESS)


def _secure_erase(sec: Security, r: Container) -> Outcome:
    if _state_refused(sec, True):
        return Outcome(S.INVALID_STATE)
    if not _check_user(sec, r.passphrase):
        return Outcome(S.INVALID_PASSPHRASE)
    sec.user = None
    sec.locked = False
    if sec.master_enabled:
        sec.master = None
    return Outcome(S.SUCCESS, erase=Erase.CRYPTO)


def _overwrite(sec: Security, r: Container) -> Outcome:
    if _state_refused(sec, True):
        return Outcome(S.INVALID_STATE)
    if not _check_user(sec, r.passphrase):
        return Outcome(S.INVALID_PASSPHRASE)
    sec.overwrite = Overwrite.RUNNING
    sec.overwrite_progress = 0.0
    return Outcome(S.SUCCESS, erase=Erase.OVERWRITE)


def _query_overwrite(sec: Security, _: Container) -> Outcome:
    if sec.overwrite is Overwrite.RUNNING:
        return Outcome(S.OVERWRITE_IN_PROGRESS)
    if sec.overwrite is Overwrite.DONE:
        sec.overwrite = Overwrite.IDLE
        return Outcome(S.SUCCESS)
    return Outcome(S.OVERWRITE_SEQUENCE_ERROR)


def _master_refused(sec: Security) -> bool:
    return sec.overwrite is Overwrite.RUNNING or sec.frozen or sec.master_limit


def _set_master(sec: Security, r: Container) -> Outcome:
    if r.new == ZERO_PASSPHRASE:
        return Outcome(S.INVALID_INPUT)
    if not sec.master_enabled:
        return Outcome(S.NOT_SUPPORTED)
    if _master_refused(sec):
        return Outcome(S.INVALID_STATE)
    if not _check_master(sec, r.old):
        return Outcome(S.INVALID_PASSPHRASE)
    sec.master = Sealed.seal(r.new)
    return Outcome(S.SUCCESS)


def _master_erase(sec: Security, r: Container) -> Outcome:
    if not sec.master_enabled:
        return Outcome(S.NOT_SUPPORTED)
    if _master_refused(sec):
        return Outcome(S.INVALID_STATE)
    if not _check_master(sec, r.passphrase):
        return Outcome(S.INVALID_PASSPHRASE)
    sec.user = None
    sec.locked = False
    sec.user_attempts = 0
    return Outcome(S.SUCCESS, erase=Erase.CRYPTO)


_STEPS = {
    FN_GET_SECURITY_STATE: (NoInput, _get_state),
    FN_SET_PASSPHRASE: (TwoPassphrases, _set_passphrase),
    FN_DISABLE_PASSPHRASE: (OnePassphrase, _disable),
    FN_UNLOCK_UNIT: (OnePassphrase, _unlock),
    FN_FREEZE_LOCK: (NoInput, _freeze),
    FN_SECURE_ERASE: (OnePassphrase, _secure_erase),
    FN_OVERWRITE: (OnePassphrase, _overwrite),
    FN_QUERY_OVERWRITE: (NoInput, _query_overwrite),
    FN_SET_MASTER_PASSPHRASE: (TwoPassphrases, _set_master),
    FN_MASTER_SECURE_ERASE: (OnePassphrase, _master_erase),
}
