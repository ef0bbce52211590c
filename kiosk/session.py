"""The terminal's one screen: who is being served, which flow is on, and the page's view.

The kiosk server runs one ``Screen``. It follows the daemon's event stream (card in/out,
identity, scans, platform status), runs the flows, and publishes the whole view model to the
page over server-sent events after every change. The page renders and sends actions back;
it keeps nothing but what it is shown (masked values only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from kiosk.config import KioskConfig, UiConfig
from kiosk.edge_client import EdgeClient, EdgeError
from kiosk.flows import FLOWS, Context, Flow, IllegalTransition, Timing
from kiosk.flows.base import advice, text

log = logging.getLogger("kiosk.session")

__all__ = ["Screen", "parse_sse"]


def parse_sse(buffer: str) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """Split complete SSE frames off ``buffer``: ([(event, data)], rest) (pure)."""
    events: list[tuple[str, dict[str, Any]]] = []
    while "\n\n" in buffer:
        frame, buffer = buffer.split("\n\n", 1)
        kind, data = "message", ""
        for line in frame.splitlines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
        if data:
            try:
                events.append((kind, json.loads(data)))
            except ValueError:
                continue
    return events, buffer


# What a patient can do about a card that could not be read. Retrying only helps when the
# read itself failed; a lost, locked or expired card needs the service desk.
_CARD_RETRY = {"todo": "Please take your card and try again, or go to a staffed counter.",
               "todo_zh": "请取出卡片后重试，或到人工窗口办理。"}
_CARD_DESK = {"todo": "Please take your card and go to a staffed counter.",
              "todo_zh": "请取出卡片，到人工窗口办理。"}
_CARD_ERROR_TODO = {code: _CARD_DESK for code in
                    ("card_blocked", "card_auth_blocked", "card_expired")}
# At a cashier desk the same faults, as staff act on them.
_DESK_CARD_RETRY = {"todo": "Take the card out and read it again; if it fails again, look the "
                            "patient up by ID document.",
                    "todo_zh": "请取出卡片重新读卡；如仍失败，请凭有效身份证件查询患者。"}
_DESK_CARD_TODO = {
    "card_blocked": {"todo": "This card is reported lost: check the patient's ID document and "
                             "follow the lost-card procedure.",
                     "todo_zh": "该卡已挂失：请核对患者有效身份证件，按挂失流程办理。"},
    "card_auth_blocked": {"todo": "The card is locked: check the patient's ID document; the "
                                  "card needs re-issuing.",
                          "todo_zh": "卡片已锁定：请核对患者身份证件，需补办新卡。"},
    "card_expired": {"todo": "The card has expired: check the patient's ID document; the card "
                             "needs renewing.",
                     "todo_zh": "卡片已过有效期：请核对患者身份证件，需换发新卡。"},
}


class Screen:
    """View model and dispatcher of one terminal's UI."""

    def __init__(self, cfg: KioskConfig, edge: EdgeClient, *,
                 timing: Timing | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        self.cfg = cfg
        #: The kiosk's own config; ``cfg`` is it with central's screen settings on top.
        self.base_cfg = cfg
        #: Screen settings central set (language, idle_timeout_s, countdown_s, voice).
        self.remote_ui: dict[str, Any] = {}
        #: Grows when they change: the page fetches /api/config again when it sees a new one.
        self.ui_rev = 0
        #: Set while the terminal waits for enrollment: the pairing screen shows it.
        self.pairing: dict[str, Any] | None = None
        self._reconnect_now = False  # the pairing API's event stream ended: enrolled
        self.edge = edge
        self.role = cfg.ui.role
        self.timing = timing or Timing()
        self._now = now or (lambda: datetime.now(ZoneInfo(cfg.ui.timezone)))
        self.version = 0
        self.screen = "locked" if self.role == "cashier" else "attract"
        self.identity: dict[str, Any] | None = None
        self.patient: dict[str, Any] | None = None
        self.flow: Flow | None = None
        self.staff: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.notice: dict[str, Any] | None = None
        self.edge_ok = True
        self.platform_ok = True
        self._subs: set[asyncio.Queue[dict[str, Any]]] = set()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._seen_scans: list[str] = []
        self.stamps: dict[str, float] = {}  # event → loop time (for the benchmark's trace)
        self._last_action = 0.0  # loop time of the last page action or card event
        # Bumped by every card event and scan and sent with the view: the page's idle clock
        # starts afresh on it, as it does on a touch (a patient who only inserts a card or
        # shows a code is still there).
        self.activity = 0
        # A physical card is in the slot (the daemon tracks it): a session ended from the
        # screen then waits on "take your card" until it is out. A QR session has none.
        self._card_in = False
        # A flow whose card left while money or paper moved runs on to its outcome
        # (docs/architecture.md "Delivery rules"); card events wait until then.
        self._detached: Flow | None = None
        self._card_back = False  # a card went in while a detached flow was finishing
        self._moved = asyncio.Event()  # set on every change: wakes the detached watcher

    # -- view ------------------------------------------------------------------------------

    def today(self) -> date:
        """The hospital's date."""
        return self._now().date()

    def view(self) -> dict[str, Any]:
        """Everything the page shows."""
        return {
            "v": self.version, "role": self.role,
            "screen": "pairing" if self.pairing is not None else self.screen,
            "identity": self.identity, "patient": self.patient,
            "flow": self.flow.view() if self.flow else None,
            "staff": self.staff, "error": self.error, "notice": self.notice,
            "online": {"edge": self.edge_ok, "platform": self.platform_ok},
            "today": self.today().isoformat(), "activity": self.activity,
            "pairing": self.pairing, "ui_rev": self.ui_rev,
        }

    def changed(self, *_: Any) -> None:
        """Publish the view to every page."""
        self.version += 1
        self._moved.set()
        v = self.view()
        for q in list(self._subs):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(v)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of views, starting with the current one."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(16)
        q.put_nowait(self.view())
        self._subs.add(q)
        try:
            yield q
        finally:
            self._subs.discard(q)

    # -- following the daemon ----------------------------------------------------------------

    async def follow(self) -> None:
        """Consume the daemon's event stream forever (reconnecting), and poll its health."""
        health = asyncio.create_task(self._health_loop())
        try:
            while True:
                buffer = ""
                self._reconnect_now = False
                try:
                    async for chunk in self.edge.events():
                        if not self.edge_ok:
                            self.edge_ok = True
                            await self.sync()
                        buffer += chunk.decode("utf-8", "replace")
                        events, buffer = parse_sse(buffer)
                        for _kind, ev in events:
                            await self.on_edge_event(ev.get("kind", _kind), ev.get("data", {}))
                except (EdgeError, OSError, Exception) as exc:
                    log.warning("edge event stream lost: %s", type(exc).__name__)
                if self._reconnect_now:
                    continue  # enrolled: the full API's stream is there now
                if self.edge_ok:
                    self.edge_ok = False
                    self.changed()
                await asyncio.sleep(1.0)
        finally:
            health.cancel()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            with contextlib.suppress(Exception):
                await self.sync()
            with contextlib.suppress(Exception):
                await self.idle_check()

    async def idle_check(self) -> None:
        """Backstop for the page's countdown (a closed or crashed page cannot end a session).

        After the idle timeout plus a grace period with no action and no card event, a patient
        session ends (kiosk) or the desk locks (cashier) — never while money or paper moves.
        """
        now = asyncio.get_running_loop().time()
        if self.pairing is not None:
            return  # nobody is served while the terminal waits for enrollment
        limit = self.cfg.ui.staff_lock_s if self.role == "cashier" else self.cfg.ui.idle_timeout_s
        if now - self._last_action < limit + 10:
            return
        if self.flow is not None and self.flow.busy:
            return
        if self.role == "cashier" and self.staff is not None:
            log.info("desk locked after inactivity")
            await self._a_lock()
        elif self.role != "cashier" and self.screen not in ("attract", "locked", "take_card"):
            log.info("session ended after inactivity")
            await self._a_end()

    async def sync(self) -> None:
        """Align with the daemon's health (uplink, platform, session) — after a reconnect too."""
        try:
            h = await self.edge.health()
        except EdgeError:
            if self.edge_ok:
                self.edge_ok = False
                self.changed()
            return
        plat = bool(h.get("uplink_connected")) and h.get("platform_ok") is not False
        changed = (not self.edge_ok) or plat != self.platform_ok
        changed = self.apply_enrollment(h.get("enrollment"), notify=False) or changed
        changed = self.apply_ui(h.get("ui"), notify=False) or changed
        self.edge_ok, self.platform_ok = True, plat
        session = h.get("session")
        self._card_in = session is not None and session.get("via") != "ehc_qr"
        if session is None and (self.patient or self.identity or self.screen == "take_card"):
            if self._detached is None:
                await self._card_left("attract")
            changed = True
        elif (session and session.get("state") == "ready" and not (self.identity or self.patient)
              and self.screen != "take_card"):
            # A session this screen has not taken up yet (a reconnect, a restart). One it
            # serves already — a QR session has a patient but no card identity — is left
            # alone: taking it up again would throw the patient out of their flow.
            await self.on_edge_event("card.identity", session)
            return
        if self.role == "cashier" and h.get("staff") is None and self.staff is not None:
            self.staff = None
            self._wipe("locked")
            changed = True
        if changed:
            self.changed()

    async def on_edge_event(self, kind: str, data: dict[str, Any]) -> None:
        """React to one daemon event."""
        loop = asyncio.get_running_loop()
        self.stamps[kind] = self._last_action = loop.time()
        if kind.startswith("card.") or kind == "scan":
            self.activity += 1
        if kind in ("card.inserted", "card.error") or (
                kind == "card.identity" and data.get("via") != "ehc_qr"):
            self._card_in = True
        elif kind in {"card.removed", "card.identity"}:
            # A QR session replaces whatever the daemon held: no card of it to wait on.
            self._card_in = False
        if kind in ("card.inserted", "card.identity", "card.error") and self._holding():
            # Money or paper is moving for the card that left: this card is served once
            # that is settled (sync() then picks its session up again).
            self._card_back = True
            return
        if kind == "card.inserted":
            left = self.flow
            self._wipe("reading" if self._serving() else self.screen)
            self.changed()
            if left is not None:
                self._spawn(self._abandon(left))
        elif kind == "card.identity":
            if not self._serving() or self.screen == "take_card":
                return  # the session was ended here; only the card's removal is awaited
            self.identity = dict(data.get("identity") or {}) or None
            if data.get("patient"):
                self.patient = dict(data["patient"])
                self.screen = "menu"
                self.changed()
                return
            self.screen = "identifying"
            self.changed()
            self._spawn(self._identify())
        elif kind == "card.error":
            self._wipe("error" if self._serving() else self.screen)
            err = data.get("error") or {}
            if self.role == "cashier":
                todo = _DESK_CARD_TODO.get(str(err.get("code")), _DESK_CARD_RETRY)
            else:
                todo = _CARD_ERROR_TODO.get(str(err.get("code")), _CARD_RETRY)
            self.error = {**err, **todo}
            self.changed()
        elif kind in ("card.removed", "session.ended"):
            if self._detached is None:
                await self._card_left(self._idle_screen())
        elif kind == "scan":
            version = self.version
            await self.on_scan(data)
            if self.version == version:
                self.changed()  # a scan that changed nothing still counts as activity
        elif kind == "platform.status":
            self.platform_ok = bool(data.get("ok"))
            self.changed()
        elif kind == "enrollment":
            self.apply_enrollment(data)
            if data.get("state") == "enrolled":
                self._reconnect_now = True
        elif kind == "ui.settings":
            self.apply_ui(data)
        elif kind == "staff.logout" and self.staff is not None:
            self.staff = None
            self._wipe("locked")
            self.changed()

    # -- fleet: enrollment and central's screen settings -------------------------------------

    def apply_enrollment(self, enrollment: Any, *, notify: bool = True) -> bool:
        """Show the pairing screen while the terminal waits for enrollment; True if changed.

        ``enrollment``: the daemon's ``/v1/enrollment`` answer (None: a daemon that has no
        enrollment, i.e. enrolled). Once enrolled the screen goes back to its idle screen.
        """
        state = enrollment.get("state") if isinstance(enrollment, dict) else None
        if state in ("enrolling", "pending", "rejected"):
            assert isinstance(enrollment, dict)
            keys = ("state", "code", "serial", "expires_at", "retry_at", "message",
                    "message_zh")
            pairing = {k: enrollment.get(k) for k in keys}
            if pairing == self.pairing:
                return False
            if self.pairing is None:
                self._wipe(self._idle_screen())
            self.pairing = pairing
        elif self.pairing is not None:
            self.pairing = None
            self._wipe(self._idle_screen())
        else:
            return False
        if notify:
            self.changed()
        return True

    def apply_ui(self, settings: Any, *, notify: bool = True) -> bool:
        """Take central's screen settings over the kiosk's TOML; True if they changed.

        Only ``language``, ``idle_timeout_s``, ``countdown_s`` and ``voice``; a combination
        the kiosk cannot run (a countdown longer than the timeout) is ignored.
        """
        if not isinstance(settings, dict):
            settings = {}
        allowed = {k: v for k, v in settings.items()
                   if k in ("language", "idle_timeout_s", "countdown_s", "voice")}
        if allowed == self.remote_ui:
            return False
        try:
            ui = UiConfig.model_validate({**self.base_cfg.ui.model_dump(), **allowed})
        except ValidationError as exc:
            log.warning("screen settings from central ignored: %s",
                        exc.errors(include_input=False)[:1])
            return False
        self.remote_ui = allowed
        self.cfg = self.base_cfg.model_copy(update={"ui": ui})
        self.ui_rev += 1
        if notify:
            self.changed()
        return True

    def _serving(self) -> bool:
        return self.role != "cashier" or self.staff is not None

    def _idle_screen(self) -> str:
        if self.role == "cashier":
            return "attract" if self.staff is not None else "locked"
        return "attract"

    def _wipe(self, screen: str) -> None:
        """Forget the patient (masked data included) and the flow."""
        self.identity = self.patient = self.flow = None
        self.error = self.notice = None
        self.screen = screen
        self._seen_scans.clear()
        self._detached = None

    def _holding(self) -> bool:
        return self.flow is not None and self.flow.busy

    async def _card_left(self, screen: str) -> None:
        """The card (or the daemon's session) went: wipe — unless money or paper is moving.

        A busy flow is kept to its outcome: a payment being confirmed is still resolved and
        its result shown ("paid", or "being confirmed — do not pay again"); only then is the
        personal data wiped. A flow left waiting for the patient is abandoned.
        """
        flow = self.flow
        if flow is not None and flow.busy:
            flow.card_gone = True
            self.identity = None  # the card is gone; the masked patient stays until then
            self._detached = flow
            task = self._task if self._running() else None
            self.changed()
            self._spawn(self._finish_detached(flow, task))
            return
        self._wipe(screen)
        self.changed()
        if flow is not None:
            self._spawn(self._abandon(flow))

    async def _finish_detached(self, flow: Flow, task: asyncio.Task[Any] | None) -> None:
        """Wait for the detached flow's outcome, show it a while, then wipe."""
        while True:
            # A flow whose task died while "busy" would otherwise hold the screen forever.
            while flow.busy and self.flow is flow and task is not None and not task.done():
                self._moved.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._moved.wait(), 1.0)
            if self.flow is not flow:
                await self._abandon(flow)  # wiped meanwhile (a new card, the desk)
                return
            if flow.busy or not flow.shows_outcome():
                break
            await asyncio.sleep(self.timing.linger_s)
            if not flow.busy:
                break
            task = self._task  # busy again (a page action): wait for that too
        if self.flow is flow:
            await self._release(flow)
        else:
            await self._abandon(flow)

    async def _release(self, flow: Flow) -> None:
        """Wipe after a detached flow; serve a card that went in meanwhile."""
        card_back = self._card_back
        self._card_back = False
        self._wipe(self._idle_screen())
        self.changed()
        await self._abandon(flow)
        if card_back:
            with contextlib.suppress(Exception):
                await self.sync()

    @staticmethod
    async def _abandon(flow: Flow) -> None:
        """Let a flow the patient walked away from release what it holds, once; never raises."""
        if flow.abandoned:
            return
        flow.abandoned = True
        try:
            await flow.on_abandon()
        except Exception:
            log.exception("releasing an abandoned %s flow failed", flow.name)

    async def _identify(self) -> None:
        try:
            session = await self.edge.identify()
        except EdgeError as exc:
            if self.identity is None:
                return  # the card went meanwhile
            if exc.code in ("platform_unavailable", "edge_unavailable"):
                self.platform_ok = exc.code != "platform_unavailable"
                self.screen = "out_of_service"
            else:
                self.screen = "error"
                self.error = {**exc.as_dict(), **advice(exc, self.role)}
            self.changed()
            return
        if self.identity is None and session.get("via") != "ehc_qr":
            return
        self.patient = dict(session["patient"])
        self.platform_ok = True
        self.screen = "menu"
        self.stamps["identified"] = asyncio.get_running_loop().time()
        self.changed()

    async def on_scan(self, scan: dict[str, Any]) -> None:
        """A classified scan (from the hardware scanner or the page's scan field)."""
        sid = scan.get("scan_id")
        if sid in self._seen_scans:
            return
        if sid:
            self._seen_scans = [*self._seen_scans[-20:], sid]
        kind = scan.get("kind")
        if self.flow is not None:
            if self._running() or self.flow.card_gone:
                return
            self._spawn(self._flow_scan(scan), main=True)
            return
        if kind == "ehc_qr" and self._serving() and self.screen in ("attract", "error"):
            self.screen = "identifying"
            self.changed()
            self._spawn(self._qr())
        elif kind == "specimen" and self._serving() and self.screen in ("attract", "menu"):
            await self._start_flow("reports", patientless=True)
            if self.flow is not None:
                self._spawn(self._flow_scan(scan), main=True)
        elif kind == "staff_badge" and self.screen == "locked":
            self.notice = {"badge": scan.get("value")}
            self.changed()

    async def _qr(self) -> None:
        try:
            await self.edge.identify_qr()
        except EdgeError as exc:
            self.screen = "error"
            self.error = {**exc.as_dict(), **advice(exc, self.role)}
            self.changed()
            return
        # the daemon publishes card.identity with the patient: handled in on_edge_event

    async def _flow_scan(self, scan: dict[str, Any]) -> None:
        assert self.flow is not None
        flow = self.flow
        try:
            await flow.on_scan(scan)
        except EdgeError as exc:
            flow.error = {**exc.as_dict(), **advice(exc, self.role)}
            self.changed()

    # -- actions from the page ---------------------------------------------------------------

    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _spawn(self, coro: Any, *, main: bool = False) -> asyncio.Task[Any]:
        task = asyncio.create_task(self._guard(coro))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        if main:
            self._task = task
        return task

    async def _guard(self, coro: Any) -> None:
        try:
            await coro
        except IllegalTransition as exc:
            log.info("ignored action: %s", exc)
        except EdgeError as exc:
            if self.flow is not None:
                self.flow.error = {**exc.as_dict(), **advice(exc, self.role)}
            else:
                self.error = {**exc.as_dict(), **advice(exc, self.role)}
            self.changed()
        except Exception:
            log.exception("flow action failed")
            self.error = text("internal", "Something went wrong on this terminal.",
                              "本机出现故障。", todo="Please go to a staffed counter.",
                              todo_zh="请到人工窗口办理。")
            self.screen = "error"
            self.changed()

    async def dispatch(self, action: str, args: dict[str, Any], wait_s: float = 0.5
                       ) -> dict[str, Any]:
        """Run one page action; returns the view after it (long work continues meanwhile)."""
        self._last_action = asyncio.get_running_loop().time()
        if self.pairing is not None:
            return self.view()  # not enrolled: there is nothing to do here yet
        if action == "scan":
            try:
                scan = await self.edge.scan(str(args.get("text", "")))
            except EdgeError as exc:
                target = self.flow if self.flow is not None else self
                target.error = {**exc.as_dict(), **advice(exc, self.role)}
                self.changed()
                return self.view()
            await self.on_scan(scan)
        elif action in ("end", "lock", "home", "start", "login", "closing", "reprint_last",
                        "dismiss", "shift", "handover"):
            await getattr(self, f"_a_{action}")(**args)
        elif action == "flow":
            # A flow whose card has left only shows its outcome: nothing can be done for a
            # patient who is no longer identified (reprint needs the card, too).
            if self.flow is None or self._running() or self.flow.card_gone:
                return self.view()
            self._spawn(self.flow.handle(str(args.get("do")), dict(args.get("args") or {})),
                        main=True)
        else:
            return self.view()
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), wait_s)
        return self.view()

    async def _a_end(self) -> None:
        if self.flow is not None and self.flow.busy:
            return  # money or paper in motion: the session ends when it is settled
        flow = self.flow
        if flow is not None and flow is self._detached:
            await self._release(flow)  # the daemon's session ended with the card already
            return
        if self.role == "kiosk" and self._card_in:
            # The card is still in the slot: wipe what the screen shows, then ask for the
            # card until it is out. The daemon's session is kept, because its card.removed
            # is how this screen learns the card is out (it says nothing once ended).
            self._wipe("take_card")
        else:
            with contextlib.suppress(EdgeError):
                await self.edge.end_session()
            self._wipe(self._idle_screen())
        self.changed()
        if flow is not None:
            self._spawn(self._abandon(flow))

    async def _a_lock(self) -> None:
        if self.flow is not None and self.flow.busy:
            return
        flow = self.flow
        with contextlib.suppress(EdgeError):
            await self.edge.staff_logout()
        self.staff = None
        self._wipe("locked")
        self.changed()
        if flow is not None:
            self._spawn(self._abandon(flow))

    async def _a_home(self) -> None:
        if (self.flow is not None and self.flow.busy) or self.screen == "take_card":
            return
        if self.flow is not None and self.flow is self._detached:
            await self._release(self.flow)
            return
        if self.flow is not None:
            self._spawn(self._abandon(self.flow))
        self.flow = None
        self.error = self.notice = None
        self.screen = "menu" if self.patient else self._idle_screen()
        self.changed()

    async def _a_dismiss(self) -> None:
        self.error = self.notice = None
        if self.screen == "error":
            # a card that could not be read is still in the slot: it is asked back first
            self.screen = "menu" if self.patient else (
                "take_card" if self.role == "kiosk" and self._card_in else self._idle_screen())
        self.changed()

    async def _a_start(self, flow: str) -> None:
        await self._start_flow(flow)

    async def _start_flow(self, name: str, patientless: bool = False) -> None:
        entry = FLOWS.get(name)
        if entry is None or self.role not in entry[1] or not self._serving():
            return
        if self.patient is None and name != "reports":
            return
        cls = entry[0]
        ctx = Context(patient=self.patient if self.patient is not None else {},
                      role=self.role, today=self.today(), staff=self.staff)
        kw: dict[str, Any] = {}
        if name in ("register", "cancel"):
            kw["now_hhmm"] = lambda: self._now().strftime("%H:%M")
        if name in ("refund", "receipts"):
            kw["tz"] = ZoneInfo(self.cfg.ui.timezone)  # payment times in hospital time
        self.flow = cls(self.edge, ctx, on_change=self.changed, timing=self.timing, **kw)
        self.screen = "flow"
        self.error = None
        self.changed()
        if not patientless:
            self._spawn(self.flow.start(), main=True)
        else:
            self.flow.to("scan")

    async def _a_login(self, badge: str, pin: str) -> None:
        if self.role != "cashier":
            return
        try:
            self.staff = await self.edge.staff_login(badge.strip(), pin.strip())
        except EdgeError as exc:
            self.error = {**exc.as_dict(), **advice(exc, self.role)}
            if exc.code == "invalid_request" or exc.status == 422:
                self.error.update(todo="Check the badge and PIN and try again.",
                                  todo_zh="请核对工号和密码后重试。")
            self.changed()
            return
        self.error = None
        self.screen = "menu" if self.patient else "attract"
        self.changed()
        with contextlib.suppress(Exception):
            await self.sync()

    async def _a_closing(self) -> None:
        if self.staff is None:
            return
        try:
            out = await self.edge.print_doc("closing_report")
        except EdgeError as exc:
            self.error = {**exc.as_dict(), **advice(exc, self.role)}
        else:
            self.notice = {"printed": out, "what": "closing_report"}
        self.changed()

    async def _a_shift(self, show: bool = True) -> None:
        """交班: show what the handover report will list (or go back from it)."""
        if self.staff is None or (self.flow is not None and self.flow.busy):
            return
        if not show:
            self.notice = None
            self.screen = "menu" if self.patient else "attract"
            self.changed()
            return
        try:
            shift = await self.edge.shift()
        except EdgeError as exc:
            self.error = {**exc.as_dict(), **advice(exc, self.role)}
            self.changed()
            return
        self.error = None
        self.notice = {"shift": shift}
        self.screen = "shift"
        self.changed()

    async def _a_handover(self) -> None:
        """Print the shift report; once printed the daemon signs the desk out."""
        if self.staff is None or self.screen != "shift":
            return
        try:
            out = await self.edge.handover()
        except EdgeError as exc:
            self.error = {**exc.as_dict(), **advice(exc, self.role)}
            self.changed()
            return
        if out.get("state") != "printed":
            self.error = {**out, "todo": "Fix the printer, then hand over again.",
                          "todo_zh": "请排除打印机故障后再交班。"}
            self.changed()
            return
        flow = self.flow
        self.staff = None
        self._wipe("locked")
        self.notice = {"printed": out, "what": "shift_report"}
        self.changed()
        if flow is not None:
            self._spawn(self._abandon(flow))

    async def _a_reprint_last(self) -> None:
        if self.staff is None:
            return
        try:
            out = await self.edge.reprint()
        except EdgeError as exc:
            self.error = {**exc.as_dict(), **advice(exc, self.role)}
        else:
            self.notice = {"printed": out, "what": "reprint"}
        self.changed()
