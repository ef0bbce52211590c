"""Process memory probes for the footprint and soak benchmarks (Linux ``/proc`` only)."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["pss_kb", "rss_kb", "section_notes", "status_kb"]

_FIELD = re.compile(r"^(\w+):\s+(\d+) kB$", re.M)


def status_kb(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status`` (VmRSS, RssAnon, RssFile, VmHWM …)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v) for k, v in _FIELD.findall(text)}


def rss_kb(pid: int) -> int:
    """Resident set size (``VmRSS``) of ``pid`` in kB."""
    return status_kb(pid)["VmRSS"]


def pss_kb(pid: int) -> int | None:
    """Proportional set size of ``pid`` in kB (shared pages split among their users)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    m = re.search(r"^Pss:\s+(\d+) kB$", text, re.M)
    return int(m.group(1)) if m else None


def section_notes(title: str, doc: Path | None = None) -> str:
    """The hand-written ``### …`` part of the ``## {title}`` section (kept when rewriting)."""
    if doc is None:
        doc = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
    text = doc.read_text() if doc.exists() else ""
    m = re.search(rf"^## {re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", text, re.M | re.S)
    if not m:
        return ""
    notes = re.search(r"^### .*", m.group(0), re.M | re.S)
    return notes.group(0).strip() if notes else ""
