"""Column arithmetic for receipt text: display width, wrapping, label/value rows, tables.

Widths are in printer columns (Font A half-width cells, 12 dots). A Chinese printer in
Chinese mode draws every multi-byte GB code from its 24x24 font, i.e. two columns, and
single-byte ASCII from the 12x24 font, one column. East Asian Wide/Fullwidth characters are
therefore two columns, and so are Ambiguous ones (↑, ↓, ·, “”) and any other non-ASCII
character: on paper they all take a full-width cell.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from edge.devices.printer.errors import LayoutError

__all__ = [
    "Column",
    "char_width",
    "display_width",
    "format_fen",
    "kv_lines",
    "pad",
    "table_lines",
    "two_col_lines",
    "wrap",
]


def char_width(ch: str) -> int:
    """Columns one character takes on a Chinese-mode printer (1 or 2; 0 for controls)."""
    o = ord(ch)
    if 0x20 <= o < 0x7F:
        return 1
    if o < 0x20 or o == 0x7F:
        return 0
    if unicodedata.east_asian_width(ch) in ("W", "F", "A"):
        return 2
    # Narrow non-ASCII (¥, é, combining marks) still prints from the GB font: two columns.
    return 2


def display_width(text: str) -> int:
    """Total columns a string takes on paper."""
    return sum(char_width(c) for c in text)


def format_fen(fen: int) -> str:
    """Integer fen as money: 1250 → ``¥12.50``, -300 → ``-¥3.00``."""
    sign = "-" if fen < 0 else ""
    yuan, cents = divmod(abs(fen), 100)
    return f"{sign}¥{yuan}.{cents:02d}"


def pad(text: str, width: int, align: Literal["left", "right", "center"] = "left") -> str:
    """Pad text with spaces to ``width`` columns (text wider than width is returned as is)."""
    gap = max(0, width - display_width(text))
    if align == "right":
        return " " * gap + text
    if align == "center":
        return " " * (gap // 2) + text + " " * (gap - gap // 2)
    return text + " " * gap


# Characters that must not start a line (Chinese typesetting rule 避头点).
_NO_LINE_START = set("，。、；：！？）》」』】,.;:!?)%")


def wrap(text: str, width: int) -> list[str]:
    """Wrap to ``width`` columns without losing any character.

    Breaks at spaces inside Latin words where possible, anywhere between CJK characters,
    keeps closing punctuation off the start of a line, and hard-splits words that are
    longer than a line. Embedded newlines start new lines.
    """
    if width < 2:
        raise LayoutError(f"line width {width} is too narrow to wrap into")
    out: list[str] = []
    for paragraph in text.split("\n"):
        out.extend(_wrap_paragraph(paragraph, width))
    return out


def _wrap_paragraph(text: str, width: int) -> list[str]:
    lines: list[str] = []
    line = ""
    used = 0
    for ch in text:
        w = char_width(ch)
        if used + w <= width:
            line += ch
            used += w
            continue
        # Overflow: choose where to break.
        if ch == " ":
            lines.append(line.rstrip(" "))
            line, used = "", 0
            continue
        carry = ""
        if ch.isascii() and ch.isalnum() and " " in line:
            head, _, tail = line.rpartition(" ")
            if tail and tail.isascii() and display_width(tail) + w <= width:
                line, carry = head, tail
        elif ch in _NO_LINE_START and len(line) > 1 and char_width(line[-1]) + w <= width:
            line, carry = line[:-1], line[-1]
        lines.append(line.rstrip(" "))
        line = carry + ch
        used = display_width(line)
    if line or not lines:
        lines.append(line.rstrip(" "))
    return lines


def two_col_lines(left: str, right: str, width: int) -> list[str]:
    """``left`` flush left and ``right`` flush right on one line, or wrapped if too long."""
    lw, rw = display_width(left), display_width(right)
    if lw + 1 + rw <= width:
        return [left + " " * (width - lw - rw) + right]
    left_lines = wrap(left, width)
    last = left_lines[-1]
    if display_width(last) + 1 + rw <= width:
        return [*left_lines[:-1], last + " " * (width - display_width(last) - rw) + right]
    return left_lines + [pad(x, width, "right") for x in wrap(right, width)]


def kv_lines(label: str, value: str, width: int) -> list[str]:
    """``label`` then ``value``; continuation lines hang under the value, never truncated."""
    lw = display_width(label)
    if lw > width // 2:
        return wrap(label, width) + ["  " + x for x in wrap(value, width - 2)]
    parts = wrap(value, width - lw) if value else [""]
    return [label + parts[0]] + [" " * lw + p for p in parts[1:]]


@dataclass(frozen=True)
class Column:
    """A table column: header, alignment, and whether it takes the remaining width."""

    header: str
    align: Literal["left", "right", "center"] = "left"
    flex: bool = False


def table_lines(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int, *, gap: int = 1
) -> list[str]:
    """Lay a table out in ``width`` columns; the flex column wraps, the others fit content.

    ``gap`` spaces separate the columns.

    When the fixed columns leave less than 6 columns for the flex one (narrow paper),
    every row prints its flex cell on a line of its own followed by the other cells.
    """
    if sum(1 for c in columns if c.flex) != 1:
        raise LayoutError("a table needs exactly one flex column")
    for row in rows:
        if len(row) != len(columns):
            raise LayoutError("a table row has the wrong number of cells")
    flex_i = next(i for i, c in enumerate(columns) if c.flex)
    widths = [
        max([display_width(c.header)] + [display_width(r[i]) for r in rows])
        for i, c in enumerate(columns)
    ]
    gaps = (len(columns) - 1) * gap
    fixed = sum(w for i, w in enumerate(widths) if i != flex_i)
    flex_w = width - fixed - gaps
    if flex_w >= 6:
        widths[flex_i] = flex_w
        out = [_table_row([c.header for c in columns], columns, widths, gap)]
        out += [line for r in rows for line in _table_rows(r, columns, widths, flex_i, gap)]
        return out
    # Stacked form for narrow paper.
    others = [i for i in range(len(columns)) if i != flex_i]
    out = []
    for r in rows:
        out += wrap(r[flex_i], width)
        rest = (" " * gap).join(r[i] for i in others)
        out += [pad(x, width, "right") for x in wrap(rest, width)]
    return out


def _table_row(
    cells: Sequence[str], columns: Sequence[Column], widths: Sequence[int], gap: int = 1
) -> str:
    return (" " * gap).join(
        pad(c, w, col.align) for c, col, w in zip(cells, columns, widths, strict=True)
    )


def _table_rows(
    row: Sequence[str], columns: Sequence[Column], widths: Sequence[int], flex_i: int,
    gap: int = 1,
) -> list[str]:
    wrapped = wrap(row[flex_i], widths[flex_i])
    first = list(row)
    first[flex_i] = wrapped[0]
    lines = [_table_row(first, columns, widths, gap).rstrip(" ")]
    for cont in wrapped[1:]:
        cells = ["" for _ in columns]
        cells[flex_i] = cont
        lines.append(_table_row(cells, columns, widths, gap).rstrip(" "))
    return lines
