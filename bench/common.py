"""Helpers shared by the benchmarks: percentiles, subprocesses, and the performance page.

``write_section`` rewrites only its own ``## <title>`` section of docs/performance.md
(read-modify-write): other benchmarks' sections are left exactly as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PERF_DOC = REPO / "docs" / "performance.md"


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0–100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


class Procs:
    """``ykt`` subprocesses, each in its own session; ``stop_all`` leaves nothing behind."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        logdir.mkdir(parents=True, exist_ok=True)
        self.all: list[subprocess.Popen[bytes]] = []

    def ykt(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``python -m yikatong.cli *args`` with its output in ``{logdir}/{name}.log``."""
        with open(self.logdir / f"{name}.log", "ab") as out:
            p = subprocess.Popen([sys.executable, "-m", "yikatong.cli", *args], stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                 start_new_session=True)
        self.all.append(p)
        return p

    def stop_all(self) -> None:
        """SIGTERM every process group, SIGKILL what does not exit in 10 s."""
        for p in reversed(self.all):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.all:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def machine() -> str:
    """One line about where this ran."""
    return (f"{os.cpu_count()} cores, {platform.machine()}, Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}")


def write_section(title: str, body: str, doc: Path = PERF_DOC) -> None:
    """Replace (or append) the ``## {title}`` section of ``doc``; other sections untouched."""
    text = doc.read_text() if doc.exists() else "# Performance\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
        text = text.rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)


async def open_loop(call: Any, rate: float, duration: float) -> tuple[list[float], int]:
    """Start ``call()`` at ``rate``/s for ``duration`` s; latencies (ms) from the schedule."""
    loop = asyncio.get_running_loop()
    n = int(rate * duration)
    lat: list[float] = []
    errors = 0
    t0 = loop.time() + 0.05

    async def one(at: float) -> None:
        nonlocal errors
        await asyncio.sleep(max(0.0, at - loop.time()))
        try:
            await call()
            lat.append((loop.time() - at) * 1000)
        except Exception:
            errors += 1

    await asyncio.gather(*(one(t0 + i / rate) for i in range(n)))
    return lat, errors
