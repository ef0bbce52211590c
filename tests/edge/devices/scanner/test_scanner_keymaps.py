"""Keyboard-wedge decoding from recorded evdev event sequences, US and German layouts."""

from __future__ import annotations

from collections.abc import Callable

import evdev.ecodes as ecodes
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.devices.scanner import keymaps as km
from edge.devices.scanner.errors import FrameTooLong, UnmappedKey
from edge.devices.scanner.keymaps import DE, US, KeyDecoder, KeyEvent

Typist = Callable[..., list[tuple[int, int, int]]]

EMPI = "A1B2C3D4E5F60718293A4B5C6D7E8F90" * 2
NONCE = "0123456789abcdef0123456789ABCDEF"

# Recorded from a scanner in US keyboard mode reading "Ab:1" (evtest output, condensed to
# (type, code, value)): MSC_SCAN carries the HID usage, SYN_REPORT ends each report.
US_AB_COLON_1 = [
    (1, 42, 1), (4, 4, 458756), (1, 30, 1), (0, 0, 0), (1, 30, 0), (0, 0, 0), (1, 42, 0),
    (4, 4, 458757), (1, 48, 1), (0, 0, 0), (1, 48, 0), (0, 0, 0),
    (1, 42, 1), (4, 4, 458803), (1, 39, 1), (0, 0, 0), (1, 39, 0), (0, 0, 0), (1, 42, 0),
    (4, 4, 458782), (1, 2, 1), (0, 0, 0), (1, 2, 0), (0, 0, 0),
    (4, 4, 458792), (1, 28, 1), (0, 0, 0), (1, 28, 0), (0, 0, 0),
]
# The same scanner switched to German keyboard mode reading "Zy:1": 'Z' is Shift+KEY_Y,
# 'y' is KEY_Z, ':' is (right) Shift+KEY_DOT.
DE_ZY_COLON_1 = [
    (1, 42, 1), (4, 4, 458780), (1, 21, 1), (0, 0, 0), (1, 21, 0), (0, 0, 0), (1, 42, 0),
    (4, 4, 458781), (1, 44, 1), (0, 0, 0), (1, 44, 0), (0, 0, 0),
    (1, 54, 1), (4, 4, 458807), (1, 52, 1), (0, 0, 0), (1, 52, 0), (0, 0, 0), (1, 54, 0),
    (4, 4, 458782), (1, 2, 1), (0, 0, 0), (1, 2, 0), (0, 0, 0),
    (4, 4, 458792), (1, 28, 1), (0, 0, 0), (1, 28, 0), (0, 0, 0),
]


def decode(keymap: km.Keymap, events: list[tuple[int, int, int]], **kw: object
           ) -> list[object]:
    dec = KeyDecoder(keymap, **kw)  # type: ignore[arg-type]
    out = []
    for t, c, v in events:
        r = dec.feed(KeyEvent(t, c, v, 0.0))
        if r is not None:
            out.append(r)
    return out


def keys_only(events: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    return [e for e in events if e[0] == km.EV_KEY]


def test_key_codes_match_the_kernel() -> None:
    names = [n for n in dir(km) if n.startswith("KEY_")]
    assert len(names) > 60
    for n in names:
        assert getattr(km, n) == getattr(ecodes, n), n
    assert km.EV_KEY == ecodes.EV_KEY


def test_recorded_us_sequence() -> None:
    assert decode(US, US_AB_COLON_1) == ["Ab:1"]


def test_recorded_german_sequence() -> None:
    assert decode(DE, DE_ZY_COLON_1) == ["Zy:1"]


def test_wrong_layout_mangles_the_code() -> None:
    assert decode(US, DE_ZY_COLON_1) == ["Yz>1"]
    assert decode(DE, US_AB_COLON_1) == ["AbÖ1"]


def test_typist_reproduces_the_recordings(typist: Typist) -> None:
    assert keys_only(typist(US, "Ab:1")) == keys_only(US_AB_COLON_1)
    recorded_de = keys_only(DE_ZY_COLON_1)
    generated_de = keys_only(typist(DE, "Zy:1"))
    # Same keys; the recording used the right Shift for ':'.
    assert [c for _, c, _ in generated_de if c not in (42, 54)] == [
        c for _, c, _ in recorded_de if c not in (42, 54)]


@pytest.mark.parametrize("keymap", [US, DE])
def test_dynamic_ehc_qr_round_trips(keymap: km.Keymap, typist: Typist) -> None:
    text = f"{EMPI}:0:{NONCE}"
    assert decode(keymap, typist(keymap, text)) == [text]


def test_ehc_qr_typed_german_decoded_us_is_broken(typist: Typist) -> None:
    text = f"{EMPI}:1"
    (out,) = decode(US, typist(DE, text))
    assert out != text
    assert out.endswith(">1")


def test_right_shift_and_caps_lock() -> None:
    seq = [(1, km.KEY_CAPSLOCK, 1), (1, km.KEY_CAPSLOCK, 0)]
    seq += [(1, km.KEY_A, 1), (1, km.KEY_A, 0)]  # caps → 'A'
    seq += [(1, km.KEY_RIGHTSHIFT, 1), (1, km.KEY_B, 1), (1, km.KEY_B, 0),
            (1, km.KEY_RIGHTSHIFT, 0)]  # caps + shift → 'b'
    seq += [(1, km.KEY_1, 1), (1, km.KEY_1, 0)]  # caps leaves digits alone
    seq += [(1, km.KEY_SEMICOLON, 1), (1, km.KEY_ENTER, 1)]  # and punctuation
    assert decode(US, seq) == ["Ab1;"]
    assert decode(DE, seq) == ["Ab1Ö"]  # on German the key is a letter, caps applies


def test_caps_lock_state_starts_from_the_led_and_persists_across_frames() -> None:
    dec = KeyDecoder(US, caps_lock=True)
    for code in (km.KEY_X, km.KEY_ENTER, km.KEY_Y, km.KEY_ENTER):
        r = dec.feed(KeyEvent(1, code, 1))
    assert r == "Y"


def test_both_shifts_held_then_one_released_is_still_shifted() -> None:
    seq = [(1, km.KEY_LEFTSHIFT, 1), (1, km.KEY_RIGHTSHIFT, 1), (1, km.KEY_LEFTSHIFT, 0),
           (1, km.KEY_A, 1), (1, km.KEY_RIGHTSHIFT, 0), (1, km.KEY_A, 1), (1, km.KEY_ENTER, 1)]
    assert decode(US, seq) == ["Aa"]


def test_german_altgr_and_dead_keys(typist: Typist) -> None:
    assert decode(DE, typist(DE, "YG@{[]}\\~|€µ")) == ["YG@{[]}\\~|€µ"]
    assert decode(DE, typist(DE, "a^b´c`")) == ["a^b´c`"]
    compose = [(1, km.KEY_GRAVE, 1), (1, km.KEY_A, 1), (1, km.KEY_EQUAL, 1), (1, km.KEY_E, 1),
               (1, km.KEY_GRAVE, 1), (1, km.KEY_X, 1), (1, km.KEY_GRAVE, 1),
               (1, km.KEY_GRAVE, 1), (1, km.KEY_ENTER, 1)]
    assert decode(DE, compose) == ["âé^x^^"]


def test_hold_and_release_add_nothing() -> None:
    seq = [(1, km.KEY_A, 1), (1, km.KEY_A, 2), (1, km.KEY_A, 2), (1, km.KEY_A, 0),
           (1, km.KEY_ENTER, 1)]
    assert decode(US, seq) == ["a"]


def test_tab_keypad_enter_and_keypad_digits() -> None:
    seq = [(1, km.KEY_KP1, 1), (1, km.KEY_KP0, 1), (1, km.KEY_TAB, 1),
           (1, km.KEY_KPMINUS, 1), (1, km.KEY_KPENTER, 1)]
    assert decode(US, seq) == ["10", "-"]
    # With Tab not a terminator it is just a key the layout has no character for.
    (err,) = decode(US, [*seq[:3], (1, km.KEY_ENTER, 1)], tab_terminates=False)
    assert isinstance(err, UnmappedKey) and err.key_code == km.KEY_TAB
    assert decode(DE, [(1, km.KEY_KPDOT, 1), (1, km.KEY_ENTER, 1)]) == [","]


def test_unmapped_key_drops_the_frame_with_a_typed_error() -> None:
    seq = [(1, km.KEY_A, 1), (1, 59, 1), (1, km.KEY_B, 1), (1, km.KEY_ENTER, 1),
           (1, km.KEY_C, 1), (1, km.KEY_ENTER, 1)]
    out = decode(US, seq)
    assert isinstance(out[0], UnmappedKey) and out[0].key_code == 59
    assert out[0].layout == "us"
    assert out[1:] == ["c"]


def test_left_alt_codes_are_refused_not_misread() -> None:
    seq = [(1, km.KEY_LEFTALT, 1), (1, km.KEY_KP2, 1), (1, km.KEY_LEFTALT, 0),
           (1, km.KEY_ENTER, 1)]
    (err,) = decode(US, seq)
    assert isinstance(err, UnmappedKey)


def test_ctrl_gives_control_characters() -> None:
    seq = [(1, km.KEY_A, 1), (1, km.KEY_LEFTCTRL, 1), (1, km.KEY_RIGHTBRACE, 1),
           (1, km.KEY_LEFTCTRL, 0), (1, km.KEY_B, 1), (1, km.KEY_ENTER, 1)]
    assert decode(US, seq) == ["a\x1db"]


def test_over_long_frame() -> None:
    seq = [(1, km.KEY_A, 1)] * 11 + [(1, km.KEY_ENTER, 1), (1, km.KEY_B, 1),
                                     (1, km.KEY_ENTER, 1)]
    out = decode(US, seq, max_length=10)
    assert isinstance(out[0], FrameTooLong) and out[1] == "b"


def test_stale_partial_frame_is_discarded() -> None:
    dec = KeyDecoder(US, stale_after_s=0.5)
    dec.feed(KeyEvent(1, km.KEY_X, 1, 10.0))
    dec.feed(KeyEvent(1, km.KEY_Y, 1, 11.0))  # 1 s later: the "x" lost its terminator
    assert dec.feed(KeyEvent(1, km.KEY_ENTER, 1, 11.01)) == "y"


def test_empty_frame_yields_nothing() -> None:
    assert decode(US, [(1, km.KEY_ENTER, 1), (1, km.KEY_ENTER, 1)]) == []


US_PRINTABLE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                       min_size=1, max_size=80)
DE_CHARS = sorted({c for levels in DE.keys.values() for c in levels if c})


@settings(max_examples=150, deadline=None)
@given(US_PRINTABLE)
def test_any_ascii_round_trips_on_us(typist: Typist, text: str) -> None:
    assert decode(US, typist(US, text)) == [text]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(DE_CHARS), min_size=1, max_size=80))
def test_any_german_layout_text_round_trips_on_de(typist: Typist, text: str) -> None:
    assert decode(DE, typist(DE, text)) == [text]
