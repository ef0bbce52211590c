"""Fleet health (pure): each device's latest health view, and the alarms derived from it.

A device's view is one row, overwritten (``central.store``): a ``telemetry`` sample replaces
the measured part; the events that say the same thing sooner update it at once —
``printer.status`` (paper, cover), ``print.failed`` / ``print.done`` (the last job's fate).
Alarms are not stored: they are derived on each read from the view, the device's
online flag and the :class:`HealthThresholds`, so a threshold change or a recovery shows at
once and nothing has to be "cleared".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from yikatong.protocol.messages import PrinterStatus, Telemetry

__all__ = ["Alarm", "DeviceHealth", "HealthThresholds", "derive_alarms", "merge"]

Severity = Literal["error", "warning"]

# SAM states (edge/devices/card/service.py ``sam_status``) and how bad each one is for staff.
# ``not_opened`` is not here: the SAM is opened at the first card read, so an idle terminal
# after a restart reports it and is fine.
_SAM_SEVERITY: dict[str, Severity] = {
    "missing": "error", "pin_blocked": "error", "pin_error": "error",
    "pin_tries_low": "warning",
}


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """Where a measurement becomes an alarm."""

    disk_low_mb: int = 500
    temp_high_c: float = 80.0
    backlog_high: int = 100

    def __post_init__(self) -> None:
        if self.disk_low_mb < 0 or self.backlog_high < 1 or not -50 <= self.temp_high_c <= 150:
            raise ValueError("disk_low_mb >= 0, backlog_high >= 1, temp_high_c in -50…150")


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """The latest known health of one device (None = never reported)."""

    telemetry_at: datetime | None = None
    updated_at: datetime | None = None
    uptime_s: int | None = None
    cpu_temp_c: float | None = None
    disk_free_mb: int | None = None
    outbox_depth: int | None = None
    load_1m: float | None = None
    sam_state: str | None = None
    reader_present: bool | None = None
    printer: dict[str, Any] | None = None
    last_print_failed: dict[str, Any] | None = field(default=None)

    def to_json(self) -> str:
        """The stored form."""
        d = asdict(self)
        for k in ("telemetry_at", "updated_at"):
            d[k] = d[k].isoformat() if d[k] is not None else None
        return json.dumps(d, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> DeviceHealth:
        """Read the stored form back (unknown keys of a newer version are ignored)."""
        d = json.loads(text)
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("telemetry_at", "updated_at"):
            if kw.get(k) is not None:
                kw[k] = datetime.fromisoformat(kw[k])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the REST API."""
        d: dict[str, Any] = json.loads(self.to_json())
        return d


@dataclass(frozen=True, slots=True)
class Alarm:
    """One active alarm of one device."""

    dev: str
    code: str
    severity: Severity
    message: str
    message_zh: str


def merge(view: DeviceHealth | None, type_: str, body: dict[str, Any],
          now: datetime) -> DeviceHealth | None:
    """The view after ``type_``/``body`` arrived; None when the message says nothing new.

    Invalid bodies are ignored (None): the view keeps what it knew.
    """
    v = view or DeviceHealth()
    try:
        if type_ == "telemetry":
            t = Telemetry.model_validate(body)
            return replace(
                v, telemetry_at=now, updated_at=now, uptime_s=t.uptime_s,
                cpu_temp_c=t.cpu_temp_c, disk_free_mb=t.disk_free_mb,
                outbox_depth=t.outbox_depth, load_1m=t.load_1m, sam_state=t.sam_state,
                reader_present=t.reader_present, printer=t.printer.model_dump(),
            )
        if type_ == "printer.status":
            p = PrinterStatus.model_validate(body)
            return replace(v, updated_at=now, printer=p.model_dump())
    except ValidationError:
        return None
    if type_ == "print.failed" and isinstance(body.get("job_id"), str):
        failed = {"job_id": body["job_id"][:64], "reason": str(body.get("reason", ""))[:64],
                  "at": now.isoformat()}
        return replace(v, updated_at=now, last_print_failed=failed)
    if type_ == "print.done" and v.last_print_failed is not None:
        return replace(v, updated_at=now, last_print_failed=None)  # printing works again
    return None


def derive_alarms(dev: str, *, online: bool, enabled: bool, health: DeviceHealth | None,
                  thresholds: HealthThresholds) -> list[Alarm]:
    """Active alarms of one device, errors first (a disabled device raises none)."""
    if not enabled:
        return []
    out: list[Alarm] = []

    def add(code: str, sev: Severity, en: str, zh: str) -> None:
        out.append(Alarm(dev, code, sev, en, zh))

    if not online:
        add("offline", "error", "Device offline", "设备离线")
    h = health or DeviceHealth()
    p = h.printer or {}
    if p.get("paper") == "out":
        add("paper_out", "error", "Printer out of paper", "打印机缺纸")
    elif p.get("paper") == "near_end":
        add("paper_near_end", "warning", "Printer paper near end", "打印纸将尽")
    if p.get("cover_open"):
        add("cover_open", "error", "Printer cover open", "打印机上盖打开")
    if h.reader_present is False:
        add("reader_missing", "error", "Card reader missing", "读卡器未连接")
    if h.sam_state in _SAM_SEVERITY:
        add("sam_fault", _SAM_SEVERITY[h.sam_state], f"SAM fault ({h.sam_state})",
            f"PSAM 卡故障（{h.sam_state}）")
    if h.disk_free_mb is not None and h.disk_free_mb < thresholds.disk_low_mb:
        add("disk_low", "warning", f"Disk low: {h.disk_free_mb} MB free",
            f"磁盘空间不足：剩余 {h.disk_free_mb} MB")
    if h.cpu_temp_c is not None and h.cpu_temp_c > thresholds.temp_high_c:
        add("temp_high", "warning", f"CPU temperature high: {h.cpu_temp_c:g} °C",
            f"CPU 温度过高：{h.cpu_temp_c:g} °C")
    if h.outbox_depth is not None and h.outbox_depth > thresholds.backlog_high:
        add("backlog_high", "warning", f"Backlog high: {h.outbox_depth} messages waiting",
            f"待发送积压：{h.outbox_depth} 条")
    if h.last_print_failed is not None:
        reason = h.last_print_failed.get("reason") or "unknown"
        add("print_failed", "warning", f"Last print failed ({reason})",
            f"上次打印失败（{reason}）")
    out.sort(key=lambda a: a.severity != "error")
    return out
