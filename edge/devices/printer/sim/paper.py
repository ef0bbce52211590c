"""Draw decoded jobs as thermal paper (PNG) with Pillow: what the roll would look like.

Characters sit on the printer's grid: 12x24-dot half-width cells for ASCII and 24x24 for
GB characters (the same ``char_width`` the layouts use), scaled by pixel doubling for
double width/height like a print head does. The CJK font is Noto Sans Mono CJK SC from
Debian's fonts-noto-cjk, whose Latin glyphs are exactly half the CJK advance.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import qrcode
from PIL import Image, ImageDraw, ImageFont

from edge.devices.printer.escpos.profiles import PrinterProfile, get_profile
from edge.devices.printer.escpos.text import char_width
from edge.devices.printer.sim.decoder import DecodedJob, Feed, PrintedLine, PrintedQr

__all__ = ["find_cjk_font", "job_png", "render_job", "render_jobs"]

_FALLBACK_FONTS = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 7),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc", 7),
)
_LINE_DOTS = 34  # ESC 2 default line spacing, 1/6 inch at 203 dpi
_CELL_H = 24
_FONT_PX = 22  # leaves room in the 24-dot cell for descenders and underscores
_FONT_TOP = -6  # Noto's em box starts ~8 px above the ink of a CJK glyph at 22 px
_MARGIN = 32  # unprinted paper either side of the 72 mm print area on 80 mm paper


class FontNotFound(RuntimeError):
    """No CJK font is installed (install Debian's fonts-noto-cjk)."""


@functools.cache
def find_cjk_font(bold: bool = False) -> tuple[str, int]:
    """(path, face index) of Noto Sans Mono CJK SC, found with fc-match or the Debian path."""
    pattern = "Noto Sans Mono CJK SC" + (":bold" if bold else "")
    fc = shutil.which("fc-match")
    if fc:
        try:
            out = subprocess.run(
                [fc, "-f", "%{file}:%{index}", pattern],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout
            path, _, index = out.rpartition(":")
            if "CJK" in path and Path(path).is_file():
                return path, int(index or 0)
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    fallback, face = _FALLBACK_FONTS[1 if bold else 0]
    if Path(fallback).is_file():
        return fallback, face
    raise FontNotFound("Noto Sans CJK not found; apt-get install fonts-noto-cjk")


@functools.cache
def _font(bold: bool) -> ImageFont.FreeTypeFont:
    path, index = find_cjk_font(bold)
    return ImageFont.truetype(path, size=_FONT_PX, index=index)


@functools.cache
def _glyph(ch: str, bold: bool) -> Image.Image:
    """One character drawn into its grid cell (12x24 or 24x24), grey levels."""
    w = 12 * max(1, char_width(ch))
    img = Image.new("L", (w, _CELL_H), 255)
    draw = ImageDraw.Draw(img)
    font = _font(bold)
    # Centre the glyph horizontally in its cell.
    length = font.getlength(ch)
    draw.text(((w - length) / 2, _FONT_TOP), ch, font=font, fill=0)
    return img


def _line_image(line: PrintedLine, dots: int) -> Image.Image:
    height = _CELL_H * line.height
    img = Image.new("L", (dots, max(height, _CELL_H)), 255)
    x = 0
    strips: list[tuple[Image.Image, int]] = []
    for run in line.runs:
        for ch in run.text:
            if char_width(ch) == 0:
                continue
            g = _glyph(ch, run.bold)
            if run.width != 1 or run.height != 1:
                g = g.resize((g.width * run.width, g.height * run.height), Image.Resampling.NEAREST)
            strips.append((g, height - g.height))
            x += g.width
    if line.align == "center":
        x0 = max(0, (dots - x) // 2)
    elif line.align == "right":
        x0 = max(0, dots - x)
    else:
        x0 = 0
    for g, y in strips:
        if x0 + g.width > dots:  # the head wraps what does not fit onto the next line
            break
        img.paste(g, (x0, y))
        x0 += g.width
    return img


def _qr_image(qr: PrintedQr, dots: int) -> Image.Image:
    ec = {
        "L": qrcode.constants.ERROR_CORRECT_L,
        "M": qrcode.constants.ERROR_CORRECT_M,
        "Q": qrcode.constants.ERROR_CORRECT_Q,
        "H": qrcode.constants.ERROR_CORRECT_H,
    }[qr.ec_level]
    code = qrcode.QRCode(error_correction=ec, box_size=1, border=0)
    code.add_data(qr.payload.encode("utf-8"))
    code.make(fit=True)
    matrix = code.get_matrix()
    n = len(matrix) * qr.module_size
    img = Image.new("L", (dots, n + 8), 255)
    x0 = {"left": 0, "center": (dots - n) // 2, "right": dots - n}[qr.align]
    draw = ImageDraw.Draw(img)
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            if dark:
                x, y = x0 + c * qr.module_size, 4 + r * qr.module_size
                draw.rectangle([x, y, x + qr.module_size - 1, y + qr.module_size - 1], fill=0)
    return img


def render_job(job: DecodedJob, profile: PrinterProfile | str = "xprinter_xp80") -> Image.Image:
    """One job as a paper strip (1-bit thermal look), 80/58 mm wide incl. margins."""
    prof = get_profile(profile) if isinstance(profile, str) else profile
    dots = prof.dots_per_line
    parts: list[tuple[Image.Image | None, int]] = []
    for el in job.elements:
        if isinstance(el, PrintedLine):
            line = _line_image(el, dots)
            parts.append((line, line.height + (_LINE_DOTS - _CELL_H)))
        elif isinstance(el, PrintedQr):
            qr = _qr_image(el, dots)
            parts.append((qr, qr.height))
        elif isinstance(el, Feed):
            parts.append((None, int(el.lines * _LINE_DOTS)))
    total = sum(h for _, h in parts) + 2 * _MARGIN
    paper = Image.new("L", (dots + 2 * _MARGIN, max(total, 2 * _MARGIN)), 255)
    y = _MARGIN
    for img, h in parts:
        if img is not None:
            paper.paste(img, (_MARGIN, y))
        y += h
    if job.cut:
        draw = ImageDraw.Draw(paper)
        for x in range(0, paper.width, 12):  # the cut edge, drawn as a dashed line
            draw.line([(x, paper.height - 2), (x + 6, paper.height - 2)], fill=160)
    # A thermal head either burns a dot or not.
    return paper.point(lambda v: 0 if v < 235 else 255).convert("1")


def render_jobs(
    jobs: Sequence[DecodedJob], profile: PrinterProfile | str = "xprinter_xp80"
) -> Image.Image:
    """Several jobs one under another, as they come off the roll."""
    images = [render_job(j, profile) for j in jobs]
    if not images:
        return render_job(DecodedJob(), profile)
    out = Image.new("1", (images[0].width, sum(i.height for i in images)), 1)
    y = 0
    for img in images:
        out.paste(img, (0, y))
        y += img.height
    return out


def job_png(job: DecodedJob, profile: PrinterProfile | str = "xprinter_xp80") -> bytes:
    """PNG bytes of one job."""
    buf = io.BytesIO()
    render_job(job, profile).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
