"""Keyboard-wedge decoding (pure, no I/O): Linux key events → scanned text.

A HID scanner "types" its data: it looks up each character in the keyboard layout it was
programmed for and sends the key presses a person on that layout would make. We must decode
with the same layout. Decode a German-programmed scanner as US and ``:`` (Shift+``.`` on
QWERTZ) arrives as ``>``, ``Y``/``Z`` swap and the e-health QR is mangled — the classic
wedge bug. Layouts are data below; key codes are the kernel's (linux/input-event-codes.h).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edge.devices.scanner.errors import FrameTooLong, UnmappedKey

__all__ = [
    "EV_KEY",
    "KEYMAPS",
    "PRESSED",
    "RELEASED",
    "REPEATED",
    "KeyDecoder",
    "KeyEvent",
    "KeyResult",
    "Keymap",
]

EV_KEY = 0x01
# EV_KEY values. Not KEY_UP/KEY_DOWN: those names are the arrow keys in the kernel header.
RELEASED, PRESSED, REPEATED = 0, 1, 2

# Key codes from linux/input-event-codes.h (checked against evdev.ecodes in the tests).
KEY_ESC = 1
KEY_1, KEY_2, KEY_3, KEY_4, KEY_5, KEY_6, KEY_7, KEY_8, KEY_9, KEY_0 = range(2, 12)
KEY_MINUS, KEY_EQUAL, KEY_BACKSPACE, KEY_TAB = 12, 13, 14, 15
KEY_Q, KEY_W, KEY_E, KEY_R, KEY_T, KEY_Y, KEY_U, KEY_I, KEY_O, KEY_P = range(16, 26)
KEY_LEFTBRACE, KEY_RIGHTBRACE, KEY_ENTER, KEY_LEFTCTRL = 26, 27, 28, 29
KEY_A, KEY_S, KEY_D, KEY_F, KEY_G, KEY_H, KEY_J, KEY_K, KEY_L = range(30, 39)
KEY_SEMICOLON, KEY_APOSTROPHE, KEY_GRAVE, KEY_LEFTSHIFT, KEY_BACKSLASH = 39, 40, 41, 42, 43
KEY_Z, KEY_X, KEY_C, KEY_V, KEY_B, KEY_N, KEY_M = range(44, 51)
KEY_COMMA, KEY_DOT, KEY_SLASH, KEY_RIGHTSHIFT, KEY_KPASTERISK = 51, 52, 53, 54, 55
KEY_LEFTALT, KEY_SPACE, KEY_CAPSLOCK, KEY_NUMLOCK = 56, 57, 58, 69
KEY_KP7, KEY_KP8, KEY_KP9, KEY_KPMINUS = 71, 72, 73, 74
KEY_KP4, KEY_KP5, KEY_KP6, KEY_KPPLUS = 75, 76, 77, 78
KEY_KP1, KEY_KP2, KEY_KP3, KEY_KP0, KEY_KPDOT = 79, 80, 81, 82, 83
KEY_102ND, KEY_KPENTER, KEY_RIGHTCTRL, KEY_KPSLASH, KEY_RIGHTALT = 86, 96, 97, 98, 100
KEY_LEFTMETA, KEY_RIGHTMETA = 125, 126

_DIGIT_ROW = (KEY_1, KEY_2, KEY_3, KEY_4, KEY_5, KEY_6, KEY_7, KEY_8, KEY_9, KEY_0,
              KEY_MINUS, KEY_EQUAL)
_TOP_ROW = (KEY_Q, KEY_W, KEY_E, KEY_R, KEY_T, KEY_Y, KEY_U, KEY_I, KEY_O, KEY_P,
            KEY_LEFTBRACE, KEY_RIGHTBRACE)
_HOME_ROW = (KEY_A, KEY_S, KEY_D, KEY_F, KEY_G, KEY_H, KEY_J, KEY_K, KEY_L,
             KEY_SEMICOLON, KEY_APOSTROPHE, KEY_GRAVE)
_BOTTOM_ROW = (KEY_Z, KEY_X, KEY_C, KEY_V, KEY_B, KEY_N, KEY_M, KEY_COMMA, KEY_DOT, KEY_SLASH)
# Scanners send keypad keys for digits in some "numeric keypad" modes. NumLock is not
# tracked: a scanner never means cursor movement, so keypad keys are always characters.
_KEYPAD = {KEY_KP0: "0", KEY_KP1: "1", KEY_KP2: "2", KEY_KP3: "3", KEY_KP4: "4",
           KEY_KP5: "5", KEY_KP6: "6", KEY_KP7: "7", KEY_KP8: "8", KEY_KP9: "9",
           KEY_KPSLASH: "/", KEY_KPASTERISK: "*", KEY_KPMINUS: "-", KEY_KPPLUS: "+"}
_SHIFTS = frozenset({KEY_LEFTSHIFT, KEY_RIGHTSHIFT})
_CTRLS = frozenset({KEY_LEFTCTRL, KEY_RIGHTCTRL})
_IGNORED = frozenset({KEY_NUMLOCK, KEY_LEFTMETA, KEY_RIGHTMETA})

# Levels: 0 plain, 1 Shift, 2 AltGr. "" = nothing on that level.
Levels = tuple[str, str, str]


def _rows(*rows: tuple[tuple[int, ...], str, str, str]) -> dict[int, Levels]:
    out: dict[int, Levels] = {}
    for codes, plain, shifted, altgr in rows:
        if not (len(codes) == len(plain) == len(shifted)) or len(altgr) > len(codes):
            raise ValueError("keymap row lengths differ")
        for i, code in enumerate(codes):
            ag = altgr[i] if i < len(altgr) and altgr[i] != " " else ""
            out[code] = (plain[i], shifted[i], ag)
    return out


@dataclass(frozen=True, eq=False)
class Keymap:
    """One keyboard layout as data: key code → characters per level, plus dead keys."""

    name: str
    keys: Mapping[int, Levels]
    # (code, level) pairs that are dead keys: they wait for the next key to compose with.
    dead: frozenset[tuple[int, int]] = frozenset()
    compose: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def char(self, code: int, level: int) -> str:
        """Character for ``code`` at ``level``, or "" if the layout has none."""
        levels = self.keys.get(code)
        if levels is None:
            return _KEYPAD.get(code, "")
        return levels[level]


# US (ANSI/ISO), per the xkb "us" symbols file. KEY_102ND exists on ISO boards only.
US = Keymap(
    name="us",
    keys=MappingProxyType({
        **_rows(
            (_DIGIT_ROW, "1234567890-=", "!@#$%^&*()_+", ""),
            (_TOP_ROW, "qwertyuiop[]", "QWERTYUIOP{}", ""),
            (_HOME_ROW, "asdfghjkl;'`", 'ASDFGHJKL:"~', ""),
            (_BOTTOM_ROW, "zxcvbnm,./", "ZXCVBNM<>?", ""),
            ((KEY_BACKSLASH, KEY_102ND, KEY_SPACE, KEY_KPDOT), "\\\\ .", "|| .", ""),
        ),
    }),
)

# German QWERTZ (T1), per the xkb "de" symbols file: Y/Z swapped, Shift+digits differ, ':' is
# Shift+'.', '@' is AltGr+Q. ´ ` ^ are dead keys (a scanner sends them followed by Space).
# The keypad decimal key gives ',' on the German layout.
DE = Keymap(
    name="de",
    keys=MappingProxyType({
        **_rows(
            (_DIGIT_ROW, "1234567890ß´", '!"§$%&/()=?`', " ²³   {[]}\\"),
            (_TOP_ROW, "qwertzuiopü+", "QWERTZUIOPÜ*", "@ €        ~"),
            (_HOME_ROW, "asdfghjklöä^", "ASDFGHJKLÖÄ°", ""),
            (_BOTTOM_ROW, "yxcvbnm,.-", "YXCVBNM;:_", "      µ"),
            ((KEY_BACKSLASH, KEY_102ND, KEY_SPACE, KEY_KPDOT), "#< ,", "'> ,", " |"),
        ),
    }),
    dead=frozenset({(KEY_EQUAL, 0), (KEY_EQUAL, 1), (KEY_GRAVE, 0)}),
    compose=MappingProxyType({
        **{("´", b): c for b, c in zip("aeiouAEIOU", "áéíóúÁÉÍÓÚ", strict=True)},
        **{("`", b): c for b, c in zip("aeiouAEIOU", "àèìòùÀÈÌÒÙ", strict=True)},
        **{("^", b): c for b, c in zip("aeiouAEIOU", "âêîôûÂÊÎÔÛ", strict=True)},
    }),
)

KEYMAPS: Mapping[str, Keymap] = MappingProxyType({"us": US, "de": DE})


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """One input event as we keep it: evdev's (type, code, value) plus its timestamp."""

    type: int
    code: int
    value: int
    ts: float = 0.0


KeyResult = str | UnmappedKey | FrameTooLong


class KeyDecoder:
    """Feed key events one by one; a terminator key yields the frame's text or an error."""

    def __init__(
        self,
        keymap: Keymap,
        *,
        max_length: int = 1024,
        tab_terminates: bool = True,
        stale_after_s: float = 1.0,
        caps_lock: bool = False,
    ) -> None:
        self._map = keymap
        self._max = max_length
        self._terminators = frozenset({KEY_ENTER, KEY_KPENTER} | ({KEY_TAB} if tab_terminates
                                                                   else set()))
        self._stale_after = stale_after_s
        self.caps_lock = caps_lock  # toggled state survives frames, like the keyboard LED
        self._held: set[int] = set()
        self._buf: list[str] = []
        self._dead: str = ""
        self._bad: int | None = None
        self._overflow = False
        self._last_ts: float | None = None

    def reset(self) -> None:
        """Drop any partial frame and released-key state (device reopened)."""
        self._held.clear()
        self._clear_frame()

    def _clear_frame(self) -> None:
        self._buf.clear()
        self._dead = ""
        self._bad = None
        self._overflow = False

    def feed(self, ev: KeyEvent) -> KeyResult | None:
        """Consume one event; return text, a typed error, or None while a frame is open."""
        if ev.type != EV_KEY:
            return None  # EV_SYN / EV_MSC scan codes carry nothing we need
        # A scanner types a frame in milliseconds; a long gap means the previous frame lost
        # its terminator (cable wiggle, scanner reset) and must not prefix the next code.
        if self._last_ts is not None and ev.ts - self._last_ts > self._stale_after:
            self._clear_frame()
        self._last_ts = ev.ts
        code, value = ev.code, ev.value
        if code in _SHIFTS or code in _CTRLS or code in (KEY_RIGHTALT, KEY_LEFTALT):
            if value == PRESSED:
                self._held.add(code)
            elif value == RELEASED:
                self._held.discard(code)
            return None
        if value != PRESSED:
            # Releases carry nothing; autorepeat (value 2) comes from the kernel when a key
            # report gets stuck, never from a scanner meaning it, so it must not add chars.
            return None
        if code == KEY_CAPSLOCK:
            self.caps_lock = not self.caps_lock
            return None
        if code in _IGNORED:
            return None
        if code in self._terminators:
            return self._finish()
        ch, dead = self._char(code)
        self._add(ch, dead, code)
        return None

    def _char(self, code: int) -> tuple[str, bool]:
        """Character for ``code`` under the held modifiers, and whether it is a dead key."""
        shift = bool(self._held & _SHIFTS)
        if KEY_LEFTALT in self._held:
            return "", False  # Alt+keypad character codes are a Windows feature we do not emulate
        level = 2 if KEY_RIGHTALT in self._held else 0
        base = self._map.char(code, 0)
        if level == 0:
            letter = len(base) == 1 and base.isalpha() and self._map.char(code, 1) == base.upper()
            level = 1 if shift != (self.caps_lock and letter) else 0
        ch = self._map.char(code, level)
        if ch and (code, level) in self._map.dead:
            return ch, True
        if ch and self._held & _CTRLS:
            c = ch.upper()
            # Ctrl+letter gives the C0 control character (Ctrl+] = GS, the GS1 separator).
            return (chr(ord(c) - 64) if "@" <= c <= "_" else ""), False
        return ch, False

    def _add(self, ch: str, dead: bool, code: int) -> None:
        if not ch:
            if self._bad is None:
                self._bad = code
            return
        if dead:
            if self._dead:
                self._append(self._dead)  # two dead keys in a row: the first stands alone
            self._dead = ch
            return
        if self._dead:
            pending, self._dead = self._dead, ""
            if ch == " ":
                ch = pending
            elif (composed := self._map.compose.get((pending, ch))) is not None:
                ch = composed
            else:
                self._append(pending)
        self._append(ch)

    def _append(self, ch: str) -> None:
        if len(self._buf) >= self._max:
            self._overflow = True
            return
        self._buf.append(ch)

    def _finish(self) -> KeyResult | None:
        if self._dead:
            self._append(self._dead)
        bad, overflow, text = self._bad, self._overflow, "".join(self._buf)
        self._clear_frame()
        if bad is not None:
            return UnmappedKey(bad, self._map.name)
        if overflow:
            return FrameTooLong(self._max)
        return text or None
