"""A virtual DIMM's SMART health: sensor values, alarm thresholds, injected conditions, shutdown state.

The values a guest reads (Intel fn 1) are the base sensors overridden by any injected
condition (fn 18); disabling an injection restores the base value, as nfit_test restores
its defaults. Temperatures are kept in the wire encoding — 1/16 °C with bit 15 as the sign
of a magnitude (ndctl's encoding) — and compared through `temperature_sixteenths`.

The state outlives the daemon (`to_bytes`/`from_bytes`): a dirty-shutdown count that reset
on every restart would hide exactly the events it exists to count. `dirty_shutdown()` is the
lifecycle owner's hook for "the daemon was not stopped cleanly".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from construct import Int8ul, Int16ul, Int32ul, Struct, Terminated

from .state_blob import StateFormatError, parse_body, unwrap, wrap

HEALTH_NON_CRITICAL = 1 << 0
HEALTH_CRITICAL = 1 << 1
HEALTH_FATAL = 1 << 2

ALARM_SPARES = 1 << 0
ALARM_MEDIA_TEMPERATURE = 1 << 1
ALARM_CTRL_TEMPERATURE = 1 << 2
ALARM_ALL = ALARM_SPARES | ALARM_MEDIA_TEMPERATURE | ALARM_CTRL_TEMPERATURE

TEMPERATURE_SIGN = 1 << 15
U32_MAX = 0xFFFFFFFF

BLOB_KIND = b"HLTH"
BLOB_VERSION = 1


def encode_temperature(celsius: float) -> int:
    """°C → the u16 wire form: magnitude in 1/16 °C, bit 15 set for below zero."""
    sixteenths = round(abs(celsius) * 16)
    if sixteenths >= TEMPERATURE_SIGN:
        raise ValueError(f"{celsius} °C does not fit the 15-bit magnitude")
    return sixteenths | (TEMPERATURE_SIGN if celsius < 0 else 0)


def temperature_sixteenths(raw: int) -> int:
    """The signed value of a wire temperature, in 1/16 °C (for comparisons)."""
    magnitude = raw & (TEMPERATURE_SIGN - 1)
    return -magnitude if raw & TEMPERATURE_SIGN else magnitude


@dataclass
class Thresholds:
    """Alarm thresholds (Intel fns 2 and 17); defaults are nfit_test's."""

    alarm_control: int = ALARM_SPARES | ALARM_MEDIA_TEMPERATURE
    spares: int = 5
    media_temperature: int = 40 * 16
    ctrl_temperature: int = 30 * 16


@dataclass
class Health:
    """One DIMM's health; the base values describe a new, healthy DIMM at room temperature."""

    health: int = 0
    spares: int = 100  # % of spare capacity left
    life_used: int = 0  # %
    media_temperature: int = 23 * 16
    ctrl_temperature: int = 25 * 16
    shutdown_state: int = 0  # 1: the last shutdown was dirty
    shutdown_count: int = 0  # dirty shutdowns, ever
    thresholds: Thresholds = field(default_factory=Thresholds)
    injected_media_temperature: int | None = None
    injected_spares: int | None = None
    injected_fatal: bool = False
    latch_shutdown_status: bool = False  # Intel fn 10's last "enable"

    # -- what the guest sees -------------------------------------------------------------

    @property
    def effective_health(self) -> int:
        return self.health | (HEALTH_FATAL if self.injected_fatal else 0)

    @property
    def effective_spares(self) -> int:
        return self.spares if self.injected_spares is None else self.injected_spares

    @property
    def effective_media_temperature(self) -> int:
        return self.media_temperature if self.injected_media_temperature is None else self.injected_media_temperature

    def alarm_flags(self) -> int:
        """The alarms raised now: an enabled threshold crossed (spares at or below, temperatures at or above)."""
        t = self.thresholds
        flags = 0
        if t.alarm_control & ALARM_SPARES and self.effective_spares <= t.spares:
            flags |= ALARM_SPARES
        if t.alarm_control & ALARM_MEDIA_TEMPERATURE and temperature_sixteenths(
            self.effective_media_temperature
        ) >= temperature_sixteenths(t.media_temperature):
            flags |= ALARM_MEDIA_TEMPERATURE
        if t.alarm_control & ALARM_CTRL_TEMPERATURE and temperature_sixteenths(
            self.ctrl_temperature
        ) >= temperature_sixteenths(t.ctrl_temperature):
            flags |= ALARM_CTRL_TEMPERATURE
        return flags

    def needs_attention(self) -> bool:
        """Whether a change leaving this state should raise DIMM Notify 0x81 (nfit_test's `smart_notify` rule)."""
        return bool(
            self.alarm_flags()
            or self.effective_health & (HEALTH_CRITICAL | HEALTH_FATAL)
            or self.shutdown_state
        )

    # -- lifecycle hooks -----------------------------------------------------------------

    def dirty_shutdown(self) -> None:
        """Record that the daemon (the DIMM's "platform") stopped without a clean shutdown."""
        self.shutdown_state = 1
        self.shutdown_count = min(self.shutdown_count + 1, U32_MAX)

    def clean_shutdown(self) -> None:
        """Record a clean shutdown: the last-shutdown state reads clean again; the count stays."""
        self.shutdown_state = 0

    # -- saved form ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The versioned blob (kind b"HLTH") holding every field."""
        t = self.thresholds
        body = HealthBodyV1.build(
            {
                "health": self.health,
                "spares": self.spares,
                "life_used": self.life_used,
                "media_temperature": self.media_temperature,
                "ctrl_temperature": self.ctrl_temperature,
                "shutdown_state": self.shutdown_state,
                "shutdown_count": self.shutdown_count,
                "alarm_control": t.alarm_control,
                "threshold_spares": t.spares,
                "threshold_media_temperature": t.media_temperature,
                "threshold_ctrl_temperature": t.ctrl_temperature,
                "injected": (
                    (INJECTED_MEDIA_TEMPERATURE if self.injected_media_temperature is not None else 0)
                    | (INJECTED_SPARES if self.injected_spares is not None else 0)
                    | (INJECTED_FATAL if self.injected_fatal else 0)
                ),
                "injected_media_temperature": self.injected_media_temperature or 0,
                "injected_spares": self.injected_spares or 0,
                "latch_shutdown_status": int(self.latch_shutdown_status),
            }
        )
        return wrap(BLOB_KIND, BLOB_VERSION, body)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Health:
        """The health a `to_bytes` blob describes.

        Errors: `StateFormatError` for a corrupt or newer blob or out-of-range values.
        """
        _, body = unwrap(BLOB_KIND, BLOB_VERSION, blob)
        b = parse_body(HealthBodyV1, body)
        if (
            b.spares > 100
            or b.threshold_spares > 100
            or b.injected_spares > 100
            or b.life_used > 100
            or b.shutdown_state > 1
            or b.latch_shutdown_status > 1
            or b.injected & ~INJECTED_ALL
            or b.alarm_control & ~ALARM_ALL
        ):
            raise StateFormatError("health blob holds out-of-range values")
        return cls(
            health=b.health,
            spares=b.spares,
            life_used=b.life_used,
            media_temperature=b.media_temperature,
            ctrl_temperature=b.ctrl_temperature,
            shutdown_state=b.shutdown_state,
            shutdown_count=b.shutdown_count,
            thresholds=Thresholds(
                b.alarm_control, b.threshold_spares, b.threshold_media_temperature, b.threshold_ctrl_temperature
            ),
            injected_media_temperature=b.injected_media_temperature if b.injected & INJECTED_MEDIA_TEMPERATURE else None,
            injected_spares=b.injected_spares if b.injected & INJECTED_SPARES else None,
            injected_fatal=bool(b.injected & INJECTED_FATAL),
            latch_shutdown_status=bool(b.latch_shutdown_status),
        )


INJECTED_MEDIA_TEMPERATURE = 1 << 0
INJECTED_SPARES = 1 << 1
INJECTED_FATAL = 1 << 2
INJECTED_ALL = INJECTED_MEDIA_TEMPERATURE | INJECTED_SPARES | INJECTED_FATAL

HealthBodyV1 = Struct(
    "health" / Int8ul,
    "spares" / Int8ul,
    "life_used" / Int8ul,
    "media_temperature" / Int16ul,
    "ctrl_temperature" / Int16ul,
    "shutdown_state" / Int8ul,
    "shutdown_count" / Int32ul,
    "alarm_control" / Int16ul,
    "threshold_spares" / Int8ul,
    "threshold_media_temperature" / Int16ul,
    "threshold_ctrl_temperature" / Int16ul,
    "injected" / Int8ul,  # which injected_* values apply (INJECTED_* bits)
    "injected_media_temperature" / Int16ul,
    "injected_spares" / Int8ul,
    "latch_shutdown_status" / Int8ul,
    Terminated,
)
"""Version 1 body of a health blob."""
