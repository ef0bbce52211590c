"""Persisted SAM PIN failures: a PIN the SAM rejected is never presented to it again.

A PSAM allows a few PIN tries (3 on most) and a blocked SAM has to go back to its issuer.
``SamSession`` keeps a rejected PIN in memory, but that ends with the process: a daemon
restart, ``ykt card sam`` or ``ykt card read`` would each spend another try with the same
wrong PIN. This small JSON file in the card service's state directory remembers, per SAM
serial, a fingerprint of the rejected PIN. Whoever opens that SAM next with the same PIN
gets the failure without a VERIFY being sent; a PIN file holding another PIN drops the
record (the new PIN gets its one try); a successful VERIFY clears it.

The fingerprint is scrypt(PIN, salt = SAM serial): the file never holds the PIN, and a
short PIN costs real work to recover from it (the PIN file itself, next to it, is the
secret that matters). Writes go to a temporary file that is fsynced and renamed over the
old one, so a power cut leaves either the old or the new record, never half a file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.devices.card import errors as E

__all__ = ["PinFailure", "SamPinLedger", "pin_fingerprint"]


def pin_fingerprint(serial: bytes, pin: str) -> str:
    """scrypt(PIN, salt=serial) as hex — comparable, not reversible at a glance."""
    return hashlib.scrypt(pin.encode("ascii"), salt=b"ykt-sam-pin:" + serial,
                          n=2 ** 14, r=8, p=1, dklen=16).hex()


@dataclass(frozen=True, slots=True)
class PinFailure:
    """One SAM's rejected PIN: when, and what the SAM said."""

    serial: str  # hex of SAM file 0015
    fingerprint: str
    retries_left: int | None
    sw: str | None
    at: str  # ISO 8601, UTC


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SamPinLedger:
    """The rejected-PIN records of one device (one JSON file, keyed by SAM serial)."""

    def __init__(self, path: Path, *, now: Callable[[], dt.datetime] = _utcnow) -> None:
        self.path = Path(path)
        self._now = now

    def _load(self) -> dict[str, PinFailure]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise E.SamError(f"Cannot read the SAM PIN state file {self.path}: {exc}",
                             "无法读取 PSAM 密码状态文件，请联系工作人员。") from exc
        try:
            doc = json.loads(raw)
            return {k: PinFailure(**v) for k, v in doc["failures"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Unknown state: presenting the PIN could spend a try we promised not to
            # spend, so refuse and let staff look (deleting the file re-allows one try).
            raise E.SamError(f"SAM PIN state file {self.path} is damaged; delete it after "
                             "checking the PIN file", "PSAM 密码状态文件损坏，请联系工作人员。"
                             ) from exc

    def _save(self, failures: dict[str, PinFailure]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"failures": {k: asdict(v) for k, v in sorted(failures.items())}}
        fd, tmp = tempfile.mkstemp(prefix=".sam-pin-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def failure_for(self, serial: bytes, pin: str) -> PinFailure | None:
        """The recorded rejection of this PIN by this SAM; a record of another PIN is
        dropped (the PIN file was changed, so the new PIN may be tried once)."""
        failures = self._load()
        known = failures.get(serial.hex().upper())
        if known is None:
            return None
        if known.fingerprint == pin_fingerprint(serial, pin):
            return known
        del failures[known.serial]
        self._save(failures)
        return None

    def record(self, serial: bytes, pin: str, *, retries_left: int | None,
               sw: str | None) -> PinFailure:
        """Remember that this SAM rejected this PIN."""
        failures = self._load()
        key = serial.hex().upper()
        failures[key] = PinFailure(key, pin_fingerprint(serial, pin), retries_left, sw,
                                   self._now().isoformat(timespec="seconds"))
        self._save(failures)
        return failures[key]

    def clear(self, serial: bytes) -> None:
        """Forget this SAM's record (its PIN was accepted)."""
        failures = self._load()
        if failures.pop(serial.hex().upper(), None) is not None:
            self._save(failures)
