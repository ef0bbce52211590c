"""A stateful fake of the edge client for the flow tests: scripted answers, recorded calls."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest

from kiosk.edge_client import EdgeError
from kiosk.flows import Context, Timing


def err(code: str, status: int = 503, **extra: Any) -> EdgeError:
    """An edge error as the real client raises it."""
    return EdgeError(status, code, f"{code} (en)", f"{code}（中）", **extra)


UNAVAILABLE = err("platform_unavailable", 503)
UNKNOWN = err("outcome_unknown", 504, request_id="r")


class FakeEdge:
    """Answers from ``script``: key → value, exception, callable, or list of those (consumed
    in order, the last one repeating). Keys: request types (``reg.slots``) and ``pay``,
    ``pay_status``, ``pay_reverse``, ``request_result``, ``refund``, ``print``, ``reprint``,
    ``printer``."""

    def __init__(self) -> None:
        self.script: dict[str, Any] = {
            "printer": {"ready": True, "problem": None, "paper": "ok"},
            "print": {"state": "printed", "job_id": "job-1", "reason": None},
            "reprint": {"state": "printed", "job_id": "job-1", "copy": True},
        }
        self.calls: list[tuple[str, Any]] = []

    def _answer(self, key: str, arg: Any) -> Any:
        self.calls.append((key, arg))
        if key not in self.script:
            raise AssertionError(f"unscripted call {key} {arg!r}")
        entry = self.script[key]
        if isinstance(entry, list):
            entry = entry.pop(0) if len(entry) > 1 else entry[0]
        if isinstance(entry, Callable) and not isinstance(entry, type):  # type: ignore[arg-type]
            entry = entry(arg)
        if isinstance(entry, BaseException):
            raise entry
        return entry

    def called(self, key: str) -> list[Any]:
        """Arguments of every call of ``key``."""
        return [a for k, a in self.calls if k == key]

    async def request(self, type_: str, body: dict[str, Any], timeout_s: float | None = None,
                      request_id: str | None = None) -> Any:
        return self._answer(type_, body)

    async def request_result(self, request_id: str, wait_s: float = 0.0) -> Any:
        return self._answer("request_result", request_id)

    async def pay(self, **kw: Any) -> dict[str, Any]:
        return self._answer("pay", kw)

    async def pay_status(self, payment_id: str) -> dict[str, Any]:
        return self._answer("pay_status", payment_id)

    async def pay_reverse(self, payment_id: str) -> dict[str, Any]:
        return self._answer("pay_reverse", payment_id)

    async def refund(self, payment_id: str, amount_fen: int, reason: str) -> dict[str, Any]:
        return self._answer("refund", {"payment_id": payment_id, "amount_fen": amount_fen,
                                       "reason": reason})

    async def payments(self) -> list[dict[str, Any]]:
        return self._answer("payments", None)

    async def reprint_payment(self, payment_id: str) -> dict[str, Any]:
        return self._answer("reprint_payment", payment_id)

    async def print_doc(self, kind: str, ref: str | None = None, *, copy: bool = False) -> Any:
        return self._answer("print", {"kind": kind, "ref": ref, "copy": copy})

    async def reprint(self, job_id: str | None = None) -> dict[str, Any]:
        return self._answer("reprint", job_id)

    async def printer_status(self) -> dict[str, Any]:
        return self._answer("printer", None)

    async def identify(self) -> dict[str, Any]:
        return self._answer("identify", None)


class FakeTime:
    """Injected clock and sleep: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


PATIENT = {"patient_id": "P000123", "name": "李*英", "id_number": "310***********0022",
           "balance_fen": 5000, "insured": True, "sex": "F", "card_no": "3101********0002"}


@pytest.fixture
def edge() -> FakeEdge:
    return FakeEdge()


@pytest.fixture
def ftime() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make(edge: FakeEdge, ftime: FakeTime) -> Callable[..., Any]:
    """Build a flow wired to the fakes; records every state it passes through."""

    def build(cls: type, role: str = "kiosk", patient: dict[str, Any] | None = None,
              staff: dict[str, Any] | None = None, **kw: Any) -> Any:
        ctx = Context(patient=dict(PATIENT if patient is None else patient), role=role,
                      today=date(2026, 11, 22), staff=staff)
        return cls(edge, ctx, sleep=ftime.sleep, clock=ftime.clock,
                   timing=Timing(poll_interval_s=2, confirm_window_s=30), **kw)

    return build
