"""Benchmark: health card inserted → masked identity on the kiosk screen, vs the card read alone.

Starts the site-in-a-box (real pcscd+vpcd, ``ykt edge``, ``ykt kiosk``, central, Mosquitto,
reference platform) and headless Debian Chromium on the kiosk page. For each of ``n``
insertions of a virtual card it records, on one wall clock:

* ``t0`` — just before the card goes into the vpcd slot;
* ``t_edge`` — when the daemon's own event stream (``/v1/events``, read here directly with
  the terminal's API token) delivers ``card.identity``: this is the card read alone
  (pcscd notices the card, the daemon reads it with the SAM, checks the hot list);
* ``t_screen`` — when the page's DOM shows the masked name (a MutationObserver in the page
  stamps ``Date.now()``): edge event → kiosk server (SSE relay into the flow state) → page
  (SSE) → render.

UI overhead = ``t_screen − t_edge`` (target ≤ 300 ms). The page learns everything through
server-sent events end to end; nothing polls. Figures are printed and written to the
"Kiosk UI" section of docs/performance.md (only that section is rewritten); nothing is
asserted.

    .venv/bin/python bench/kiosk_ui.py [-n 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from central.demo import DEMO_PATIENTS, Site  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic"]

OBSERVER = """() => {
  window.__seen = null;
  const mo = new MutationObserver(() => {
    if (window.__seen === null) {
      const el = document.querySelector('[data-testid=identity-name], [data-testid=patient-name]');
      if (el && el.textContent.trim()) window.__seen = Date.now();
    }
  });
  mo.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


class EdgeEvents(threading.Thread):
    """Reads the daemon's SSE stream; stamps each ``card.identity`` with time.time()."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.token = url, token
        self.stamps: list[float] = []
        self.ready = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            with httpx.stream("GET", self.url, headers=headers, timeout=None) as r:
                self.ready.set()
                for line in r.iter_lines():
                    if line.startswith("event: card.identity"):
                        self.stamps.append(time.time())
        except httpx.HTTPError:
            pass  # the site stopped


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30, help="timed insertions")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ykt-bench-ui-") as tmp:
        site = Site(Path(tmp))
        site.start()
        try:
            term = site.terminal("kiosk-001")
            token = (Path(tmp) / "kiosk-001" / "secrets" / "edge-api.token").read_text().strip()
            events = EdgeEvents(f"http://127.0.0.1:{term.api_port}/v1/events", token)
            events.start()
            events.ready.wait(10)
            rows: list[tuple[float, float]] = []
            with sync_playwright() as p:
                b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                pg = b.new_page(viewport={"width": 1080, "height": 1920})
                pg.goto(term.ui_url)
                pg.get_by_test_id("prompt").wait_for()
                for i in range(args.n + 3):  # 3 warm-up insertions
                    pg.evaluate(OBSERVER)
                    before = len(events.stamps)
                    t0 = time.time()
                    site.insert_card("kiosk-001", DEMO_PATIENTS[i % len(DEMO_PATIENTS)])
                    pg.wait_for_function("window.__seen !== null", timeout=20_000)
                    t_screen = pg.evaluate("window.__seen") / 1000.0
                    deadline = time.monotonic() + 5
                    while len(events.stamps) == before and time.monotonic() < deadline:
                        time.sleep(0.005)
                    t_edge = events.stamps[before]
                    if i >= 3:
                        rows.append((t_edge - t0, t_screen - t_edge))
                    pg.get_by_test_id("menu-register").wait_for(timeout=20_000)
                    site.remove_card("kiosk-001")
                    pg.get_by_test_id("prompt").wait_for(timeout=10_000)
                    time.sleep(0.3)
                b.close()
        finally:
            site.stop()
    read = [r[0] * 1000 for r in rows]
    ui = [r[1] * 1000 for r in rows]
    total = [a + b for a, b in zip(read, ui, strict=True)]
    fig = {
        "n": len(rows), "read_med": statistics.median(read), "read_p95": pct(read, 0.95),
        "ui_med": statistics.median(ui), "ui_p95": pct(ui, 0.95), "ui_max": max(ui),
        "total_med": statistics.median(total), "total_p95": pct(total, 0.95),
        "secs": time.monotonic() - started,
    }
    fig["ratio"] = fig["total_med"] / fig["read_med"]
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in fig.items()}))
    print(f"card read alone: median {fig['read_med']:.1f} ms, p95 {fig['read_p95']:.1f} ms")
    print(f"UI overhead (edge event -> name on screen): median {fig['ui_med']:.1f} ms, "
          f"p95 {fig['ui_p95']:.1f} ms, max {fig['ui_max']:.1f} ms (target <= 300 ms)")
    print(f"insert -> on screen: median {fig['total_med']:.1f} ms "
          f"({fig['ratio']:.2f}x the read alone)")
    if not args.no_write:
        write_section(fig)
    return 0


def write_section(f: dict[str, float]) -> None:
    """Rewrite only the "## Kiosk UI" section of docs/performance.md."""
    path = ROOT / "docs" / "performance.md"
    text = path.read_text(encoding="utf-8")
    verdict = "met" if f["ui_p95"] <= 300 else "NOT met"
    section = f"""## Kiosk UI

`bench/kiosk_ui.py`. Measured {dt.date.today().isoformat()} on {os.cpu_count()} cores,
{platform.machine()}, Python {platform.python_version()}; the whole run (site start, warm-up,
{f['n']} timed insertions, stop) took {f['secs']:.0f} s. Other engineers' work may have been
running on the same machine.

A virtual health card goes into the kiosk's vpcd slot; the daemon reads it (SAM
authentication, hot list) and publishes `card.identity` on its event stream; the kiosk
server turns it into the screen's view model and pushes it to the page over server-sent
events; the page renders the masked name. Server-sent events end to end, no polling.

| what | median ms | p95 ms |
|---|---|---|
| card read alone (insert → daemon's `card.identity`) | {f['read_med']:.1f} | {f['read_p95']:.1f} |
| UI overhead (`card.identity` → name in the DOM) | **{f['ui_med']:.1f}** | \
**{f['ui_p95']:.1f}** |
| insert → name on screen | {f['total_med']:.1f} | {f['total_p95']:.1f} |

UI overhead target ≤ 300 ms: **{verdict}** (max {f['ui_max']:.1f} ms). Insert → screen is
{f['ratio']:.2f}× the card read alone, measured in the same run.

Method: both stamps on one wall clock — `time.time()` when the edge stream line arrives in
the benchmark process, `Date.now()` from a MutationObserver in the page when the masked name
appears. Three warm-up insertions are dropped; between insertions the card is removed and
the start screen awaited. Nothing is asserted on time.
"""
    start = text.find("\n## Kiosk UI")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start + 1] + section + ("" if end == -1 else "\n" + text[end + 1:])
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
