"""Soak benchmark: does ``ykt edge`` stay flat in memory over many card sessions?

Starts the site-in-a-box (``yikatong.site.demo.Site``: reference platform, central with its
Mosquitto, per terminal a private pcscd + vpcd reader with a SAM, a virtual network printer,
``ykt edge`` and ``ykt kiosk``) and drives card sessions through the kiosk terminal's real
reader: a virtual health card goes into the vpcd slot, the daemon reads it (SAM
authentication, hot list) and publishes ``card.identity``; the kiosk server asks the daemon
to identify the patient (``patient.identify`` through the uplink, central and the platform);
then the card comes out and the daemon publishes ``card.removed``. Central limits patient
look-ups per terminal, so at this pace most look-ups are refused ("try again in a minute"):
still a full round trip through the uplink, counted apart. That is one session —
the same path as a patient at the kiosk, minus the touches.

Every ``--every`` sessions the edge's and the kiosk server's ``VmRSS`` (and the edge's
``RssAnon`` and its ``[heap]``) are read from ``/proc``. Reported: RSS idle (before the
first card), at the end of the warm-up, at the end and the largest; the slope after warm-up
(least squares, KB per session) over the whole post-warm-up part and over its second half.
A leak shows as a slope that stays; caches filling show as a slope that falls to ~0.

Each session waits for pcscd's 400 ms presence poll of the virtual reader twice (insert,
remove), so a session takes ≈ 0.8–1 s: the default 10 000 sessions take ≈ 2.5–3 h.

    .venv/bin/python bench/soak.py [--sessions 10000] [--every 100] [--warmup 1000]
    .venv/bin/python bench/soak.py --quick          # 300 sessions, a smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, write_section  # noqa: E402
from procmem import section_notes, status_kb  # noqa: E402

TERMINAL = "kiosk-001"


def heap_kb(pid: int) -> int:
    """Resident kB of the process's ``[heap]`` mapping (glibc's main arena)."""
    total, in_heap = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if not line[0].isupper():  # a mapping header: "addr-addr perms off dev inode path"
                in_heap = line.rstrip().endswith("[heap]")
            elif in_heap and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


class Events:
    """Counts events of one SSE stream (edge ``/v1/events`` or kiosk ``/api/events``)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.token = url, token
        self.counts: dict[str, int] = {}
        self.cond = threading.Condition()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        kind = ""
        try:
            with httpx.stream("GET", self.url, headers=headers, timeout=None) as r:
                self.ready.set()
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:].strip()
                    elif line.startswith("data: "):
                        if kind == "view":  # the kiosk's answer to the identified card
                            view = json.loads(line[6:])
                            if (view.get("patient") or {}).get("balance_fen") is not None:
                                kind = "patient"
                            elif view.get("identity") and view.get("error"):
                                kind = "refused"  # e.g. central's per-terminal look-up limit
                            else:
                                continue
                        with self.cond:
                            self.counts[kind] = self.counts.get(kind, 0) + 1
                            self.cond.notify_all()
        except httpx.HTTPError:
            pass  # the site stopped

    def wait_any(self, kinds: tuple[str, ...], n: int, timeout: float) -> bool:
        """Wait until events of ``kinds`` were seen ``n`` times in all."""
        with self.cond:
            return self.cond.wait_for(
                lambda: sum(self.counts.get(k, 0) for k in kinds) >= n, timeout)

    def wait(self, kind: str, n: int, timeout: float) -> bool:
        """Wait until ``kind`` was seen ``n`` times."""
        with self.cond:
            return self.cond.wait_for(lambda: self.counts.get(kind, 0) >= n, timeout)


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of (session, kB) points, kB per session."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else float("nan")


def sample(i: int, t0: float, edge: int, kiosk: int) -> dict[str, float]:
    """One memory sample after ``i`` sessions."""
    st = status_kb(edge)
    return {"i": i, "t": time.monotonic() - t0, "edge": st["VmRSS"],
            "edge_anon": st.get("RssAnon", 0), "edge_heap": heap_kb(edge),
            "kiosk": status_kb(kiosk)["VmRSS"]}


def soak(n: int, every: int, settle: float, log: Any) -> dict[str, Any]:
    """Run ``n`` card sessions on the site-in-a-box; memory samples every ``every``."""
    from yikatong.site.demo import DEMO_PATIENTS, Site

    with tempfile.TemporaryDirectory(prefix="ykt-bench-soak-") as tmp:
        site = Site(Path(tmp))
        site.start()
        try:
            term = site.terminal(TERMINAL)
            procs = dict(site.procs)
            edge, kiosk = procs[f"{TERMINAL} edge"].pid, procs[f"{TERMINAL} kiosk"].pid
            token = (Path(tmp) / TERMINAL / "secrets" / "edge-api.token").read_text().strip()
            api = f"http://127.0.0.1:{term.api_port}"
            deadline = time.monotonic() + 60
            while True:  # the site waits for the kiosk only; the daemon may still start
                try:
                    if httpx.get(f"{api}/v1/health", timeout=2,
                                 headers={"Authorization": f"Bearer {token}"}).is_success:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("ykt edge did not come up")
                time.sleep(0.2)
            ev = Events(f"{api}/v1/events", token)
            views = Events(term.ui_url + "api/events", None)
            for s in (ev, views):
                s.ready.wait(10)
            time.sleep(settle)
            t0 = time.monotonic()
            samples = [sample(0, t0, edge, kiosk)]
            unidentified = failed = 0
            for i in range(n):
                site.insert_card(TERMINAL, DEMO_PATIENTS[i % len(DEMO_PATIENTS)])
                if not ev.wait("card.identity", i + 1 - failed, 20):
                    failed += 1  # counted; the card still comes out and the loop goes on
                elif not views.wait_any(("patient", "refused"), i + 1 - failed - unidentified, 5):
                    unidentified += 1
                site.remove_card(TERMINAL)
                if not ev.wait("card.removed", i + 1, 20):
                    raise SystemExit(f"session {i + 1}: no card.removed")
                if (i + 1) % every == 0 or i + 1 == n:
                    samples.append(sample(i + 1, t0, edge, kiosk))
                    s = samples[-1]
                    print(f"{s['i']:6d} {s['t']:7.0f}s edge {s['edge'] / 1024:6.1f} MB "
                          f"(anon {s['edge_anon'] / 1024:.1f}, heap {s['edge_heap'] / 1024:.1f}) "
                          f"kiosk {s['kiosk'] / 1024:6.1f} MB", file=log, flush=True)
            return {"samples": samples, "failed": failed, "unidentified": unidentified,
                    "identified": views.counts.get("patient", 0),
                    "refused": views.counts.get("refused", 0),
                    "secs": time.monotonic() - t0}
        finally:
            site.stop()


def figures(res: dict[str, Any], warmup: int) -> dict[str, Any]:
    """Start/warm-up/end RSS and the slopes after warm-up."""
    ss = res["samples"]
    after = [s for s in ss if s["i"] >= warmup] or ss[-2:]
    half = after[len(after) // 2:]
    out: dict[str, Any] = {"n": ss[-1]["i"], "warmup": warmup, "idle": ss[0],
                           "warm": after[0], "end": ss[-1]}
    for key in ("edge", "edge_anon", "edge_heap", "kiosk"):
        out[f"{key}_max"] = max(s[key] for s in ss)
        out[f"{key}_slope"] = slope([(s["i"], s[key]) for s in after])
        out[f"{key}_slope2"] = slope([(s["i"], s[key]) for s in half])
    return out


def report(f: dict[str, Any], res: dict[str, Any], rows: int = 16) -> str:
    ss = res["samples"]
    step = max(1, len(ss) // rows)
    shown = ss[::step] + ([ss[-1]] if (len(ss) - 1) % step else [])

    def mb(kb: float) -> str:
        return f"{kb / 1024:.1f}"

    lines = [
        f"`bench/soak.py`. Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{machine()}; {f['n']} card sessions in {res['secs'] / 60:.0f} min "
        f"({res['secs'] / max(1, f['n']):.2f} s each; {res['failed']} reads failed, "
        f"{res['unidentified']} without the kiosk's answer within 5 s; the kiosk showed the "
        f"patient {res['identified']} times and central's refusal {res['refused']} times — "
        "central limits patient look-ups per terminal). Other engineers' work may have been "
        "running on the same machine.",
        "",
        "Each session: a virtual health card into the kiosk terminal's vpcd slot → the "
        "daemon's `card.identity` → the kiosk server's identified patient "
        "(`patient.identify` through the uplink) → card out → `card.removed`. "
        f"Warm-up: the first {f['warmup']} sessions. Slopes are least squares over the "
        "samples after warm-up (and over their second half).",
        "",
        "| process | idle (MB) | after warm-up | end | max | slope after warm-up (KB/session) "
        "| slope, second half |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (("edge", "`ykt edge` VmRSS"), ("edge_anon", "`ykt edge` RssAnon"),
                       ("edge_heap", "`ykt edge` [heap]"), ("kiosk", "`ykt kiosk` VmRSS")):
        lines.append(f"| {label} | {mb(f['idle'][key])} | {mb(f['warm'][key])} | "
                     f"**{mb(f['end'][key])}** | {mb(f[key + '_max'])} | "
                     f"**{f[key + '_slope']:.2f}** | {f[key + '_slope2']:.2f} |")
    lines += ["", "The curve (MB):", "", "| sessions | minutes | edge VmRSS | edge RssAnon | "
              "edge [heap] | kiosk VmRSS |", "|---|---|---|---|---|---|"]
    for s in shown:
        lines.append(f"| {s['i']} | {s['t'] / 60:.1f} | {mb(s['edge'])} | {mb(s['edge_anon'])} "
                     f"| {mb(s['edge_heap'])} | {mb(s['kiosk'])} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=10_000, help="card sessions")
    ap.add_argument("--every", type=int, default=100, help="sample RSS every k sessions")
    ap.add_argument("--warmup", type=int, default=None,
                    help="sessions before the slope counts (default: 10 %% of --sessions)")
    ap.add_argument("--settle", type=float, default=5.0, help="idle seconds before the first")
    ap.add_argument("--quick", action="store_true", help="300 sessions, sampled every 20")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    ap.add_argument("--json", type=Path, help="also write the samples (JSON) here")
    args = ap.parse_args()
    if args.quick:
        args.sessions, args.every = 300, 20
    warmup = args.warmup if args.warmup is not None else args.sessions // 10
    res = soak(args.sessions, args.every, args.settle, sys.stdout)
    f = figures(res, warmup)
    body = report(f, res)
    print(body)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if not args.no_write:
        notes = section_notes("Soak")  # hand-written findings stay
        write_section("Soak", body + ("\n\n" + notes if notes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
