"""Structured, privacy-masking logging for every Yikatong process.

One JSON object per line on stdout (journald stores stdout of systemd services as is):
``{"ts": ..., "level": ..., "logger": ..., "msg": ..., <extra fields>}``. A filter masks
national ID numbers, phone numbers, wallet payment codes and names wherever they appear in
the message or in extra fields, so a careless ``log.info("%s", identity)`` cannot leak.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from yikatong.common.privacy import mask_text

__all__ = ["JsonFormatter", "MaskingFilter", "known_names", "setup_logging"]

# LogRecord attributes that are not "extra" fields.
_STD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName", "color_message"}  # uvicorn's ANSI-coloured copy
)


class _KnownNames:
    """Names currently in the process (the cardholder being served) to mask verbatim."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: tuple[str, ...] = ()

    def add(self, name: str) -> None:
        """Remember a name so it is masked wherever it appears in later log lines."""
        with self._lock:
            if name and name not in self._names:
                self._names = (*self._names[-63:], name)

    def discard(self, name: str) -> None:
        """Forget a name (the session ended)."""
        with self._lock:
            self._names = tuple(n for n in self._names if n != name)

    def snapshot(self) -> tuple[str, ...]:
        """Current names, for one masking pass."""
        return self._names


known_names = _KnownNames()


def _mask_value(value: Any, names: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return mask_text(value, names)
    if isinstance(value, dict):
        return {k: _mask_value(v, names) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(v, names) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return mask_text(str(value), names)


class MaskingFilter(logging.Filter):
    """Rewrites each record so personal data never reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        names = known_names.snapshot()
        try:
            text = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            text = f"{record.msg!r} {record.args!r}"
        record.msg = mask_text(text, names)
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STD_ATTRS:
                setattr(record, key, _mask_value(value, names))
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_text(logging.Formatter().formatException(record.exc_info), names)
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, UTF-8, with extra fields kept as fields."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and key not in out:
                out[key] = value
        if record.exc_text:
            out["exc"] = record.exc_text
        elif record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(
    component: str,
    level: str = "info",
    *,
    stream: TextIO | None = None,
    quiet_loggers: Iterable[str] = ("uvicorn.access", "httpx", "httpcore", "peewee"),
) -> None:
    """Configure the root logger: JSON lines to ``stream`` (stdout), masked."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(component))
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in quiet_loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    # uvicorn installs its own handlers unless told otherwise; route them through ours.
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
