"""A fake ``central.fleet.service.FleetService`` for the dashboard, the fleet API and ``ykt fw``.

Same methods and shapes as the real service (docs/fleet-trust.md), held in memory with a
realistic site: open enrollment requests (one serial twice: a duplicate), decided ones,
five devices over two buildings in each config state, and commands that move through their
states by themselves (``step_s`` apart, per :attr:`FakeFleet.script`). Errors are
``LocalizedError`` with ``code`` and ``status``, as central.fleet raises them.

Importable as ``dashboard_fleet_fake`` (``pythonpath = ["tests"]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from yikatong.common.errors import LocalizedError
from yikatong.protocol.envelope import format_ts
from yikatong.protocol.fleet import FINAL_COMMAND_STATES, RemoteSettings, settings_hash

__all__ = ["FakeFleet", "FakeFleetError", "serve"]


class FakeFleetError(LocalizedError):
    """What central.fleet raises: a code, two messages and the HTTP status."""

    def __init__(self, status: int, code: str, message: str, message_zh: str) -> None:
        super().__init__(message, message_zh)
        self.code = code
        self.status = status


def _ts(t: datetime) -> str:
    return format_ts(t)


def _hash(settings: dict[str, Any]) -> str:
    return settings_hash(RemoteSettings.model_validate(settings))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


_OK: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "printer.test": [("delivered", {}), ("waiting", {}), ("in_progress", {}),
                     ("succeeded", {"output": {"printed": True, "paper": "ok"}})],
    "reader.selftest": [("delivered", {}), ("in_progress", {}),
                        ("succeeded", {"output": {"reader": "ACS ACR39U", "card": "absent",
                                                  "sam_terminal": "110100000001"}})],
    "logs.collect": [("delivered", {}), ("in_progress", {}),
                     ("succeeded", {"output": {"lines": 500, "bytes": 48213}})],
    "cert.rotate": [("delivered", {}), ("in_progress", {}),
                    ("succeeded", {"output": {"new_serial": "5c1e0a77d2"}})],
    "log.level": [("delivered", {}), ("succeeded", {"output": {"level": "debug"}})],
    "hotlist.refresh": [("delivered", {}), ("succeeded", {"output": {"version": 42}})],
    "reboot": [("delivered", {}), ("waiting", {}), ("in_progress", {}), ("succeeded", {})],
    "service.restart": [("delivered", {}), ("in_progress", {}), ("succeeded", {})],
}


class FakeFleet:
    """In-memory fleet service; ``calls`` records every write with its ``actor``."""

    def __init__(self, *, now: datetime | None = None, step_s: float = 0.15) -> None:
        self.t0 = now or datetime.now(UTC).replace(microsecond=0)
        self.step_s = step_s
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.ca_generations = [2]
        self.script = copy.deepcopy(_OK)
        t0 = self.t0
        self.sites = {"门诊楼": {"ui": {"language": "zh"}, "telemetry_interval_s": 60},
                      "住院部": {"ui": {"language": "zh"}}}
        self.roles = {"kiosk": {"ui": {"idle_timeout_s": 90, "voice": True}},
                      "cashier": {"ui": {"idle_timeout_s": 300}}}
        self.own: dict[str, dict[str, Any]] = {
            "kiosk-001": {"printer": {"status_poll_s": 5}},
            "kiosk-002": {"log_level": "debug"},
        }
        self._requests: list[dict[str, Any]] = [
            self._req("7KQ2-M9XD", "YKT-K2-00231", t0 - timedelta(minutes=12),
                      mac="02:42:ac:11:00:31", sam="110100000003"),
            self._req("3HVN-8R2T", "YKT-C1-00087", t0 - timedelta(minutes=41), duplicate=True,
                      model="YKT-C1 cashier", mac="02:42:ac:11:00:87"),
            self._req("W4PJ-6C0E", "YKT-C1-00087", t0 - timedelta(minutes=3), duplicate=True,
                      model="YKT-C1 cashier", mac="02:42:ac:11:00:99"),
            {**self._req("B2XK-4N7Q", "YKT-K2-00198", t0 - timedelta(hours=26),
                         mac="02:42:ac:11:00:98"),
             "status": "approved", "decided_by": "wang.li",
             "decided_at": _ts(t0 - timedelta(hours=25, minutes=50)), "device_id": "kiosk-003"},
            {**self._req("Q9TM-2F5H", "TEST-BENCH-01", t0 - timedelta(hours=5)),
             "status": "rejected", "decided_by": "zhang.wei",
             "decided_at": _ts(t0 - timedelta(hours=4, minutes=58)),
             "reason": "bench unit, not for this site"},
            {**self._req("H6RC-1VZP", "YKT-K2-00140", t0 - timedelta(hours=30)),
             "status": "expired"},
        ]
        self._devices: dict[str, dict[str, Any]] = {}
        for dev, role, site, serial, online, state in (
                ("kiosk-001", "kiosk", "门诊楼", "YKT-K2-00102", True, "in_sync"),
                ("kiosk-002", "kiosk", "门诊楼", "YKT-K2-00117", True, "pending"),
                ("cashier-001", "cashier", "门诊楼", "YKT-C1-00031", True, "in_sync"),
                ("kiosk-003", "kiosk", "住院部", "YKT-K2-00198", True, "failed"),
                ("cashier-002", "cashier", "住院部", "YKT-C1-00044", False, "unknown")):
            self._add_device(dev, role, site, serial, online=online, state=state)
        self._commands: dict[str, dict[str, Any]] = {}
        self._cmd_t: dict[str, float] = {}
        self._cmd_script: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        # Two finished commands on kiosk-001 from this morning.
        for name, args, minutes, who in (("reader.selftest", {}, 95, "wang.li"),
                                         ("log.level", {"level": "info"}, 80, "zhang.wei")):
            cid = secrets.token_hex(16)
            final = self.script[name][-1]
            at = _ts(t0 - timedelta(minutes=minutes))
            self._commands[cid] = {
                "command_id": cid, "dev": "kiosk-001", "name": name, "args": args,
                "state": final[0], "created_by": who, "created_at": at, "updated_at": at,
                "exp": _ts(t0 - timedelta(minutes=minutes - 10)), "code": None,
                "message": None, "output": args or final[1].get("output", {})}

    # -- building the site ----------------------------------------------------------------
    def _req(self, code: str, serial: str, at: datetime, *, duplicate: bool = False,
             model: str = "YKT-K2 kiosk", mac: str | None = None,
             sam: str | None = None) -> dict[str, Any]:
        return {"request_id": secrets.token_hex(16), "serial": serial, "code": code,
                "status": "pending", "duplicate": duplicate, "reenroll_of": None,
                "facts": {"serial": serial, "model": model, "mac": mac,
                          "hostname": serial.lower(), "sam_terminal": sam,
                          "reader": "ACS ACR39U", "printer": "Xprinter XP-80",
                          "version": "1.4.0"},
                "created_at": _ts(at), "expires_at": _ts(at + timedelta(hours=24)),
                "decided_by": None, "decided_at": None, "device_id": None, "reason": None}

    def _add_device(self, dev: str, role: str, site: str, serial: str, *, online: bool,
                    state: str) -> None:
        desired = self._effective(dev, role, site)
        version = 7
        reported: dict[str, Any] | None = {
            "version": version, "hash": _hash(desired), "status": "applied", "code": None,
            "message": None, "at": _ts(self.t0 - timedelta(minutes=20))}
        if state == "pending":
            version = 8
            assert reported is not None
            reported["hash"] = _hash({})
        elif state == "failed":
            version = 8
            reported = {"version": 8, "hash": _hash({}), "status": "failed",
                        "code": "printer_refused",
                        "message": "printer refused status_poll_s=0.5; previous kept",
                        "at": _ts(self.t0 - timedelta(minutes=7))}
        elif state == "unknown":
            reported = None
        self._devices[dev] = {
            "id": dev, "role": role, "site": site, "serial": serial,
            "facts": {"serial": serial, "model": "YKT-K2 kiosk" if role == "kiosk"
                      else "YKT-C1 cashier", "version": "1.4.0", "reader": "ACS ACR39U"},
            "enabled": True, "online": online,
            "cert": {"serial": secrets.token_hex(8),
                     "not_after": _ts(self.t0 + timedelta(days=351)), "revoked": False},
            "desired_version": version, "reported": reported}

    def _effective(self, dev: str, role: str, site: str) -> dict[str, Any]:
        return _merge(_merge(self.sites.get(site, {}), self.roles.get(role, {})),
                      self.own.get(dev, {}))

    def _dev(self, dev: str) -> dict[str, Any]:
        d = self._devices.get(dev)
        if d is None:
            raise FakeFleetError(404, "unknown_device", f"no device {dev}", f"没有设备 {dev}")
        return d

    def _state(self, d: dict[str, Any]) -> str:
        rep = d["reported"]
        if rep is None:
            return "unknown"
        if rep["status"] in ("failed", "rejected") and rep["version"] == d["desired_version"]:
            return "failed"
        desired = self._effective(d["id"], d["role"], d["site"])
        if rep["version"] == d["desired_version"] and rep["hash"] == _hash(desired):
            return "in_sync"
        return "pending"

    # -- enrollments ----------------------------------------------------------------------
    def enrollments(self, status: str | None = None) -> list[dict[str, Any]]:
        out = [dict(r) for r in self._requests if status is None or r["status"] == status]
        return sorted(out, key=lambda r: r["created_at"], reverse=True)

    def _open(self, code: str) -> dict[str, Any]:
        for r in self._requests:
            if r["code"] == code and r["status"] == "pending":
                return r
        raise FakeFleetError(404, "unknown_code", f"no open enrollment request with code {code}",
                             f"没有配对码为 {code} 的待批准申请")

    async def approve(self, code: str, *, device_id: str, role: str, site: str,
                      actor: str) -> dict[str, Any]:
        self.calls.append(("approve", {"code": code, "device_id": device_id, "role": role,
                                       "site": site, "actor": actor}))
        r = self._open(code)
        old = self._devices.get(device_id)
        if old is not None and old["serial"] != r["serial"]:
            raise FakeFleetError(409, "device_exists", f"device id {device_id} is taken",
                                 f"设备名 {device_id} 已被使用")
        now = _ts(datetime.now(UTC))
        r.update(status="approved", decided_by=actor, decided_at=now, device_id=device_id)
        for other in self._requests:  # approving one closes its duplicate
            if other is not r and other["serial"] == r["serial"] and other["status"] == "pending":
                other.update(status="rejected", decided_by=actor, decided_at=now,
                             reason="duplicate: another request of this serial was approved")
        self._add_device(device_id, role, site, r["serial"], online=False, state="unknown")
        return dict(r)

    async def reject(self, code: str, *, reason: str, actor: str) -> dict[str, Any]:
        self.calls.append(("reject", {"code": code, "reason": reason, "actor": actor}))
        r = self._open(code)
        r.update(status="rejected", decided_by=actor, decided_at=_ts(datetime.now(UTC)),
                 reason=reason)
        return dict(r)

    # -- devices --------------------------------------------------------------------------
    def devices_overview(self) -> list[dict[str, Any]]:
        return [{"id": d["id"], "role": d["role"], "site": d["site"],
                 "cert_not_after": d["cert"]["not_after"] if d["cert"] else None,
                 "desired_version": d["desired_version"],
                 "reported_version": d["reported"]["version"] if d["reported"] else None,
                 "config_state": self._state(d)} for d in self._devices.values()]

    def sites_overview(self) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for d in self.devices_overview():
            s = out.setdefault(d["site"], {"site": d["site"], "devices": 0, "in_sync": 0,
                                           "pending": 0, "failed": 0})
            s["devices"] += 1
            if d["config_state"] in ("in_sync", "pending", "failed"):
                s[d["config_state"]] += 1
        return list(out.values())

    def device_detail(self, dev: str) -> dict[str, Any]:
        d = self._dev(dev)
        settings = self._effective(dev, d["role"], d["site"])
        return {"id": dev, "role": d["role"], "site": d["site"], "serial": d["serial"],
                "facts": d["facts"], "enabled": d["enabled"], "online": d["online"],
                "cert": dict(d["cert"]) if d["cert"] else None,
                "desired": {"version": d["desired_version"], "hash": _hash(settings),
                            "settings": settings},
                "reported": dict(d["reported"]) if d["reported"] else None,
                "in_sync": self._state(d) == "in_sync", "commands": self.commands(dev, 20)}

    async def revoke(self, dev: str, *, actor: str) -> dict[str, Any]:
        self.calls.append(("revoke", {"dev": dev, "actor": actor}))
        d = self._dev(dev)
        d["cert"]["revoked"] = True
        d["online"] = False
        d["enabled"] = False
        return self.device_detail(dev)

    def ca_view(self) -> dict[str, Any]:
        def cert(serial: str, subject: str, days: int) -> dict[str, Any]:
            return {"serial": serial, "subject": subject, "not_before": _ts(self.t0),
                    "not_after": _ts(self.t0 + timedelta(days=days))}

        gens = self.ca_generations
        return {"root": cert("1", "CN=Yikatong Fleet Root CA", 7300),
                "issuing": cert(str(gens[-1]), f"CN=Yikatong Fleet Issuing CA G{gens[-1]}",
                                1825),
                "retired": [cert(str(g), f"CN=Yikatong Fleet Issuing CA G{g}", 1000)
                            for g in reversed(gens[:-1])],
                "server": {"serial": "77", "not_after": _ts(self.t0 + timedelta(days=398))}}

    async def rotate_ca(self, *, actor: str) -> dict[str, Any]:
        self.calls.append(("rotate_ca", {"actor": actor}))
        self.ca_generations.append(self.ca_generations[-1] + 1)
        return self.ca_view()

    async def disable(self, dev: str, *, actor: str) -> dict[str, Any]:
        self.calls.append(("disable", {"dev": dev, "actor": actor}))
        d = self._dev(dev)
        d["enabled"] = False
        d["online"] = False
        return self.device_detail(dev)

    # -- config ---------------------------------------------------------------------------
    def _own(self, kind: str, target: str) -> dict[str, Any]:
        if kind == "device":
            self._dev(target)
            return self.own.setdefault(target, {})
        if kind == "role":
            if target not in ("kiosk", "cashier"):
                raise FakeFleetError(404, "unknown_role", f"no role {target}", f"没有角色 {target}")
            return self.roles.setdefault(target, {})
        return self.sites.setdefault(target, {})

    def _targets(self, kind: str, target: str) -> list[dict[str, Any]]:
        key = {"device": "id", "site": "site", "role": "role"}[kind]
        return [d for d in self._devices.values() if d[key] == target]

    def get_config(self, kind: str, target: str) -> dict[str, Any]:
        return {"kind": kind, "target": target,
                "settings": copy.deepcopy(self._own(kind, target))}

    async def set_config(self, kind: str, target: str, settings: dict[str, Any], *,
                         actor: str, replace: bool = False) -> dict[str, Any]:
        self.calls.append(("set_config", {"kind": kind, "target": target,
                                          "settings": settings, "replace": replace,
                                          "actor": actor}))
        own = self._own(kind, target)
        new = copy.deepcopy(settings) if replace else _merge(own, settings)
        own.clear()
        own.update(new)
        for d in self._targets(kind, target):
            d["desired_version"] += 1
        return {"kind": kind, "target": target, "settings": copy.deepcopy(own),
                "devices": self._versions(kind, target)}

    def _versions(self, kind: str, target: str) -> list[dict[str, Any]]:
        return [{"id": d["id"], "version": d["desired_version"],
                 "hash": _hash(self._effective(d["id"], d["role"], d["site"]))}
                for d in self._targets(kind, target)]

    async def push_config(self, kind: str, target: str, *, actor: str) -> dict[str, Any]:
        self.calls.append(("push_config", {"kind": kind, "target": target, "actor": actor}))
        own = self._own(kind, target)
        return {"kind": kind, "target": target, "settings": copy.deepcopy(own),
                "devices": self._versions(kind, target)}

    # -- commands -------------------------------------------------------------------------
    async def send_command(self, dev: str, name: str, args: dict[str, Any], *, actor: str,
                           exp_s: int = 600) -> dict[str, Any]:
        self.calls.append(("send_command", {"dev": dev, "name": name, "args": args,
                                            "actor": actor, "exp_s": exp_s}))
        d = self._dev(dev)
        if not d["enabled"]:
            raise FakeFleetError(409, "device_disabled", f"device {dev} is disabled",
                                 f"设备 {dev} 已停用")
        cid = secrets.token_hex(16)
        now = datetime.now(UTC)
        self._commands[cid] = {
            "command_id": cid, "dev": dev, "name": name, "args": dict(args), "state": "queued",
            "created_by": actor, "created_at": _ts(now), "updated_at": _ts(now),
            "exp": _ts(now + timedelta(seconds=exp_s)), "code": None, "message": None,
            "output": {}}
        self._cmd_t[cid] = time.monotonic()
        self._cmd_script[cid] = list(self.script.get(name, [("delivered", {})]))
        return self.command(cid) or {}

    def command(self, command_id: str) -> dict[str, Any] | None:
        c = self._commands.get(command_id)
        if c is None:
            return None
        steps = self._cmd_script.get(command_id)
        if steps:  # moves on by itself, step_s per state
            n = int((time.monotonic() - self._cmd_t[command_id]) / self.step_s)
            if n >= 1:
                state, extra = steps[min(n, len(steps)) - 1]
                if c["state"] != state:
                    c.update(state=state, updated_at=_ts(datetime.now(UTC)), **extra)
                    if c["name"] == "log.level" and state == "succeeded":
                        c["output"] = {"level": c["args"].get("level")}
        return dict(c)

    def commands(self, dev: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        items = [self.command(cid) for cid, c in self._commands.items()
                 if dev is None or c["dev"] == dev]
        out = [c for c in items if c is not None]
        out.sort(key=lambda c: c["created_at"], reverse=True)
        return out[:limit]

    async def wait_command(self, command_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        first = self.command(command_id)
        assert first is not None
        while True:
            c = self.command(command_id) or first
            if c["state"] in FINAL_COMMAND_STATES or c["state"] != first["state"] \
                    or time.monotonic() >= deadline:
                return c
            await asyncio.sleep(0.02)

    # -- claim bundle ---------------------------------------------------------------------
    def claim_bundle(self) -> dict[str, Any]:
        return {"ca_pem": "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n",
                "signing_pub_pem": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAfake\n"
                                   "-----END PUBLIC KEY-----\n",
                "claim_password": "claim-Secret-123", "enroll_host": "central.example.org",
                "enroll_port": 8884}


# -- a dashboard on a loopback port (browser and ``ykt fw`` tests) -------------------------

@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on a free loopback port; yields its URL."""
    import httpx
    import uvicorn

    from yikatong.site.demo import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(f"{url}/api/status", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or not thread.is_alive():
                raise
            time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
