"""Preview: any document → PNG through render → decode → the virtual printer's paper renderer,
so the preview shows exactly what the bytes print."""

from __future__ import annotations

import io
from pathlib import Path

from edge.devices.printer.documents import Document
from edge.devices.printer.escpos.layout import render
from edge.devices.printer.escpos.profiles import PrinterProfile, get_profile
from edge.devices.printer.sim.decoder import decode
from edge.devices.printer.sim.paper import render_jobs

__all__ = ["preview_png", "save_preview"]


def preview_png(doc: Document, profile: PrinterProfile | str = "xprinter_xp80") -> bytes:
    """PNG bytes of the document as the printer would print it."""
    prof = get_profile(profile) if isinstance(profile, str) else profile
    image = render_jobs(decode(render(doc, prof)), prof)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_preview(
    doc: Document, path: str | Path, profile: PrinterProfile | str = "xprinter_xp80"
) -> Path:
    """Write the preview PNG to ``path`` and return it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(preview_png(doc, profile))
    return out
