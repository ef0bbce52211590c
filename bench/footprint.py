"""Benchmark: memory and import time of each Yikatong process, against a bare interpreter.

Three parts, each against a baseline measured in the same run:

* **Imports** — for each process's entry module (``edge.daemon``, ``kiosk.app``,
  ``central.app``, ``central.platform.sim.server``) a fresh interpreter imports it and
  reports the import time (``perf_counter`` around the import, so interpreter start-up is
  not counted) and its ``VmRSS`` right after; the baseline is ``python -c pass`` (same
  script, nothing imported). Runs alternate with the baseline; medians of ``--repeat``.
* **Where the edge's floor comes from** — the libraries the idle ``ykt edge`` has loaded,
  imported cumulatively (bare → asyncio → pydantic → … → our modules → python-escpos), so
  each row's RSS step is what that layer adds on top of the ones before it.
* **Idle processes** — the site-in-a-box (``yikatong.site.demo.Site``: reference platform,
  central with its Mosquitto, a kiosk terminal with a private pcscd + vpcd reader and SAM,
  a virtual network printer, ``ykt edge`` and ``ykt kiosk``) is started; after it has settled
  (``--settle`` s, no card, no request) each ``ykt`` process's ``VmRSS``, ``RssAnon``,
  ``RssFile`` and PSS are read from ``/proc``. The baseline is an idle bare interpreter
  (``python -c 'sleep'``) measured the same way at the same time.

Figures are printed and written to the "Footprint" section of docs/performance.md (only that
section); nothing is asserted.

    .venv/bin/python bench/footprint.py [--repeat 7] [--settle 15] [--no-site] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, write_section  # noqa: E402
from procmem import pss_kb, section_notes, status_kb  # noqa: E402

#: Process entry modules: (process, module its command imports first).
ENTRIES = (
    ("ykt edge", "edge.daemon"),
    ("ykt kiosk", "kiosk.app"),
    ("ykt central", "central.app"),
    ("ykt platform-sim", "central.platform.sim.server"),
)

#: What an idle ``ykt edge`` has loaded, in layers; each row imports everything above it too.
EDGE_LAYERS = (
    ("asyncio (with ssl → libssl/libcrypto)", "import asyncio"),
    ("pydantic + pydantic-core", "from pydantic import BaseModel"),
    ("starlette", "import starlette.applications, starlette.responses"),
    ("FastAPI (with opentelemetry-api, imported by fastapi.telemetry)", "import fastapi"),
    ("uvicorn (with click, h11)", "import uvicorn.server"),
    ("paho-mqtt", "import paho.mqtt.client"),
    ("cryptography (ciphers)", "import cryptography.hazmat.primitives.ciphers"),
    ("pyscard", "import smartcard.scard"),
    ("sqlite3, zoneinfo", "import sqlite3, zoneinfo"),
    ("our modules: `edge.daemon` and what `run()` imports", "import edge.daemon\n"
     "from edge.devices.card.service import CardService\n"
     "from edge.devices.card.hotlist import HotList\n"
     "from edge.devices.printer.driver import PrinterService\n"
     "from edge.fleet.audit import AuditLog\n"
     "from edge.fleet.hotlist_sync import HotlistSync\n"
     "from edge.fleet.telemetry import TelemetryPublisher\n"
     "from edge.uplink.client import Uplink"),
    ("python-escpos (`escpos.printer`: PIL, qrcode, barcode, pyusb, pyserial, YAML "
     "capabilities), loaded when the network printer connects", "import escpos.printer"),
)

PROBE = """\
import time
_t = time.perf_counter()
{code}
_t = time.perf_counter() - _t
import json, re
_s = open('/proc/self/status').read()
print(json.dumps({{"ms": _t * 1000, "rss": int(re.search(r'VmRSS:\\s+(\\d+)', _s).group(1)),
                  "n": len(__import__('sys').modules)}}))
"""


def probe(code: str) -> dict[str, float]:
    """Run ``code`` in a fresh interpreter: import ms, VmRSS kB after, modules, wall ms."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    wall = (time.perf_counter() - t) * 1000
    if out.returncode:
        raise SystemExit(f"probe failed: {code!r}\n{out.stderr[-2000:]}")
    res: dict[str, float] = json.loads(out.stdout)
    res["wall"] = wall
    return res


def imports(repeat: int) -> dict[str, Any]:
    """Entry-module import cost vs a bare interpreter, alternating, medians of ``repeat``."""
    codes = {"bare": "pass", **{mod: f"import {mod}" for _, mod in ENTRIES}}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in codes}
    for _ in range(repeat):
        for key, code in codes.items():
            runs[key].append(probe(code))
    return {k: {f: statistics.median(r[f] for r in v) for f in ("ms", "rss", "wall", "n")}
            for k, v in runs.items()}


def layers(repeat: int) -> list[dict[str, Any]]:
    """Cumulative import of EDGE_LAYERS: RSS and import time after each layer."""
    rows: list[dict[str, Any]] = []
    code = "pass"
    for label, step in (("bare interpreter", "pass"), *EDGE_LAYERS):
        code = step if code == "pass" else f"{code}\n{step}"
        rs = [probe(code) for _ in range(repeat)]
        rows.append({"label": label, "rss": statistics.median(r["rss"] for r in rs),
                     "ms": statistics.median(r["ms"] for r in rs),
                     "n": statistics.median(r["n"] for r in rs)})
    return rows


def idle_site(settle: float) -> dict[str, dict[str, float]]:
    """Start the site-in-a-box, let it settle, read each ``ykt`` process's memory."""
    from yikatong.site.demo import Site

    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ykt-bench-fp-") as tmp:
        site = Site(Path(tmp))
        bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        try:
            site.start()
            time.sleep(settle)
            samples: dict[str, list[dict[str, float]]] = {}
            for _ in range(3):
                for name, proc in [*site.procs, ("bare interpreter (idle)", bare)]:
                    st = status_kb(proc.pid)
                    samples.setdefault(name, []).append(
                        {"rss": st["VmRSS"], "anon": st.get("RssAnon", 0),
                         "file": st.get("RssFile", 0) + st.get("RssShmem", 0),
                         "pss": pss_kb(proc.pid) or 0, "hwm": st["VmHWM"]})
                time.sleep(1.0)
            for name, ss in samples.items():
                out[name] = {k: statistics.median(s[k] for s in ss) for k in ss[0]}
        finally:
            bare.kill()
            bare.wait()
            site.stop()
    return out


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def report(imp: dict[str, Any], lay: list[dict[str, Any]], idle: dict[str, Any],
           secs: float, repeat: int, settle: float) -> str:
    b = imp["bare"]
    lines = [
        f"`bench/footprint.py`. Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{machine()}; the run took {secs:.0f} s. Other engineers' work may have been running "
        "on the same machine (import times are the noisier figure; RSS is not load-dependent).",
        "",
        f"**Imports** — a fresh interpreter imports the process's entry module; medians of "
        f"{repeat} runs alternating with the bare baseline (`python -c pass`: "
        f"**{mb(b['rss'])} MB** RSS, {b['wall']:.0f} ms wall for the whole process).",
        "",
        "| process | entry module | import ms | RSS after (MB) | × bare RSS | + over bare (MB) "
        "| modules |",
        "|---|---|---|---|---|---|---|",
    ]
    for proc, mod in ENTRIES:
        r = imp[mod]
        lines.append(f"| {proc} | `{mod}` | {r['ms']:.0f} | {mb(r['rss'])} | "
                     f"{r['rss'] / b['rss']:.1f} | {mb(r['rss'] - b['rss'])} | {r['n']:.0f} |")
    lines += ["", "**Where the idle edge's memory comes from** — libraries imported "
              "cumulatively in a fresh interpreter (each row includes every row above it); "
              f"medians of {repeat}:", "",
              "| layer | RSS (MB) | + this layer (MB) | cumulative import ms |",
              "|---|---|---|---|"]
    prev = None
    for row in lay:
        step = "" if prev is None else mb(row["rss"] - prev)
        lines.append(f"| {row['label']} | {mb(row['rss'])} | {step} | {row['ms']:.0f} |")
        prev = row["rss"]
    if idle:
        bi = idle.get("bare interpreter (idle)", {})
        lines += ["", f"**Idle processes** — the site-in-a-box up, then {settle:g} s with no "
                  "card and no request; `/proc/PID/status` and `smaps_rollup`, median of 3 "
                  "samples 1 s apart. RssFile is mapped files (shared libraries, mostly shared "
                  "between the device's two Python processes); PSS splits shared pages among "
                  "their users.", "",
                  "| process | VmRSS (MB) | RssAnon | RssFile | PSS | × bare RSS |",
                  "|---|---|---|---|---|---|"]
        for name, r in sorted(idle.items(), key=lambda kv: kv[0]):
            ratio = f"{r['rss'] / bi['rss']:.1f}" if bi else ""
            lines.append(f"| {name} | **{mb(r['rss'])}** | {mb(r['anon'])} | {mb(r['file'])} | "
                         f"{mb(r['pss'])} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="runs per import probe")
    ap.add_argument("--settle", type=float, default=15.0, help="idle seconds before sampling")
    ap.add_argument("--no-site", action="store_true", help="skip the running-process part")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    ap.add_argument("--json", type=Path, help="also write the raw figures (JSON) here")
    args = ap.parse_args()
    t0 = time.monotonic()
    imp = imports(args.repeat)
    lay = layers(max(1, args.repeat // 2))
    idle = {} if args.no_site else idle_site(args.settle)
    body = report(imp, lay, idle, time.monotonic() - t0, args.repeat, args.settle)
    print(body)
    if args.json:
        args.json.write_text(json.dumps({"imports": imp, "layers": lay, "idle": idle}, indent=1))
    if not args.no_write:
        notes = section_notes("Footprint")  # hand-written findings stay
        write_section("Footprint", body + ("\n\n" + notes if notes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
