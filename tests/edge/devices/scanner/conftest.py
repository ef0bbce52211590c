"""Shared fixtures for scanner tests: a "typist" that turns text into a scanner's key events."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edge.devices.scanner import keymaps as km

EV_SYN, EV_MSC = 0, 4


def typed(keymap: km.Keymap, text: str, *, terminator: int = km.KEY_ENTER,
          shift_key: int = km.KEY_LEFTSHIFT) -> list[tuple[int, int, int]]:
    """(type, code, value) tuples, as evdev reports them, for ``text`` + terminator."""
    inverse: dict[str, tuple[int, int]] = {}
    for code, levels in keymap.keys.items():
        for level, ch in enumerate(levels):
            if ch and ch not in inverse:
                inverse[ch] = (code, level)
    out: list[tuple[int, int, int]] = []

    def tap(code: int, mods: tuple[int, ...] = ()) -> None:
        for m in mods:
            out.append((km.EV_KEY, m, 1))
        out.extend([(EV_MSC, 4, 0x70000 + code), (km.EV_KEY, code, 1), (EV_SYN, 0, 0),
                    (km.EV_KEY, code, 0), (EV_SYN, 0, 0)])
        for m in reversed(mods):
            out.append((km.EV_KEY, m, 0))

    for ch in text:
        code, level = inverse[ch]
        mods = {0: (), 1: (shift_key,), 2: (km.KEY_RIGHTALT,)}[level]
        tap(code, mods)
        if (code, level) in keymap.dead:
            tap(km.KEY_SPACE)  # how a scanner sends a dead-key character on its own
    tap(terminator)
    return out


@pytest.fixture(scope="session")
def typist() -> Callable[..., list[tuple[int, int, int]]]:
    """The ``typed`` helper, as a fixture (test modules cannot import siblings here)."""
    return typed
