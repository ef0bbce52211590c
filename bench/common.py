"""Helpers shared by the benchmarks: percentiles, subprocesses, and the performance page.

``write_section`` rewrites only its own ``## <title>`` section of docs/performance.md
(read-modify-write): other benchmarks' sections are left exactly as they are.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PERF_DOC = REPO / "docs" / "performance.md"


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0–100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml(data: dict[str, Any]) -> str:
    """Minimal TOML for generated configs (tables of scalars, nested)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(str(v), ensure_ascii=False)

    out: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        if prefix:
            out.append(f"[{prefix}]")
        out.extend(f"{k} = {scalar(v)}" for k, v in d.items() if not isinstance(v, dict))
        out.append("")
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", data)
    return "\n".join(out)


def secret_file(path: Path, value: str) -> Path:
    """Write ``value`` to a 0600 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return path


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers below 500."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not up within {timeout}s")


class Procs:
    """``ykt`` subprocesses, each in its own session; ``stop_all`` leaves nothing behind."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        logdir.mkdir(parents=True, exist_ok=True)
        self.all: list[subprocess.Popen[bytes]] = []

    def ykt(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``python -m edge.cli *args`` with its output in ``{logdir}/{name}.log``."""
        with open(self.logdir / f"{name}.log", "ab") as out:
            p = subprocess.Popen([sys.executable, "-m", "edge.cli", *args], stdout=out,
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
