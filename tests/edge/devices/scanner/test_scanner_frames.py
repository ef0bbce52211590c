"""Frame decoder: terminators, prefix/suffix, AIM ids, GBK, chunking, over-long frames."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.devices.scanner.errors import FrameDecodeError, FrameTooLong
from edge.devices.scanner.frames import FrameDecoder, FrameFormat, RawScan, split_aim

EMPI = "A1B2C3D4E5F60718293A4B5C6D7E8F90" * 2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scans(items: list[object]) -> list[tuple[str, str | None]]:
    return [(i.text, i.symbology) for i in items if isinstance(i, RawScan)]


def test_single_frame_with_aim_qr() -> None:
    dec = FrameDecoder(FrameFormat(), Clock(), source="s1")
    (scan,) = dec.feed(f"]Q1{EMPI}:1\r".encode())
    assert isinstance(scan, RawScan)
    assert (scan.text, scan.symbology, scan.aim_id, scan.ts, scan.source) == (
        f"{EMPI}:1", "qr", "]Q1", 100.0, "s1")


def test_aim_table() -> None:
    assert split_aim("]C0ABC") == ("]C0", "code128", "ABC")
    assert split_aim("]C1ABC") == ("]C1", "gs1_128", "ABC")
    assert split_aim("]E06901234567892") == ("]E0", "ean13", "6901234567892")
    assert split_aim("]E412345670") == ("]E4", "ean8", "12345670")
    assert split_aim("]d2010690") == ("]d2", "gs1_datamatrix", "010690")
    assert split_aim("]d1X") == ("]d1", "datamatrix", "X")
    assert split_aim("]W9X") == ("]W9", "other", "X")
    assert split_aim("]Q") == (None, None, "]Q")
    assert split_aim("ABC") == (None, None, "ABC")


def test_aim_off_keeps_text() -> None:
    dec = FrameDecoder(FrameFormat(aim=False), Clock())
    assert scans(dec.feed(b"]C0ABC\r")) == [("]C0ABC", None)]


def test_crlf_lf_and_cr_all_end_frames_when_lenient() -> None:
    dec = FrameDecoder(FrameFormat(terminator=b"\r\n"), Clock())
    assert scans(dec.feed(b"A1\r\nB2\rC3\nD4")) == [("A1", None), ("B2", None), ("C3", None)]
    assert scans(dec.feed(b"\r\n")) == [("D4", None)]


def test_strict_stx_etx_framing_with_prefix_and_suffix() -> None:
    fmt = FrameFormat(prefix=b"\x02", suffix=b"#", terminator=b"\x03", lenient_line_end=False)
    dec = FrameDecoder(fmt, Clock())
    assert scans(dec.feed(b"\x02]C0S2024000001#\x03\x02AB\rCD#\x03")) == [
        ("S2024000001", "code128"), ("AB\rCD", None)]


def test_gbk_fallback_and_utf8() -> None:
    dec = FrameDecoder(FrameFormat(), Clock())
    out = dec.feed("检验单A01\r".encode("gbk") + "检验单A01\r".encode() + b"\xef\xbb\xbfX\r")
    assert scans(out) == [("检验单A01", None), ("检验单A01", None), ("X", None)]


def test_undecodable_frame_is_a_typed_error_and_decoding_continues() -> None:
    dec = FrameDecoder(FrameFormat(), Clock())
    out = dec.feed(b"\xff\xff\x80\rOK\r")
    assert isinstance(out[0], FrameDecodeError) and out[0].length == 3
    assert scans(out) == [("OK", None)]


def test_empty_frames_and_no_reads_are_skipped() -> None:
    dec = FrameDecoder(FrameFormat(prefix=b"P"), Clock())
    assert dec.feed(b"\r\r\nP\r]Q1\r") == []


def test_over_long_frame_dropped_once_then_resync() -> None:
    dec = FrameDecoder(FrameFormat(max_frame=32), Clock())
    out = dec.feed(b"X" * 100)
    assert len(out) == 1 and isinstance(out[0], FrameTooLong) and out[0].limit == 32
    assert dec.pending <= 32
    assert dec.feed(b"Y" * 500) == []  # still the same over-long frame: reported once
    assert dec.pending <= 32
    assert scans(dec.feed(b"tail\rGOOD\r")) == [("GOOD", None)]


def test_over_long_frame_inside_one_chunk() -> None:
    dec = FrameDecoder(FrameFormat(max_frame=32), Clock())
    out = dec.feed(b"A" * 40 + b"\rOK\r")
    assert isinstance(out[0], FrameTooLong)
    assert scans(out) == [("OK", None)]


def test_split_multibyte_terminator_across_chunks() -> None:
    fmt = FrameFormat(terminator=b"\x03\x04", lenient_line_end=False, max_frame=16)
    dec = FrameDecoder(fmt, Clock())
    assert dec.feed(b"A" * 16 + b"\x03") == []
    assert scans(dec.feed(b"\x04")) == [("A" * 16, None)]


def test_timestamp_is_taken_when_the_frame_completes() -> None:
    clock = Clock()
    dec = FrameDecoder(FrameFormat(), clock)
    dec.feed(b"AB")
    clock.now = 105.0
    (scan,) = dec.feed(b"C\r")
    assert isinstance(scan, RawScan) and scan.ts == 105.0


def test_raw_scan_repr_masks_payment_code() -> None:
    raw = RawScan(text="134567890123456789", symbology="qr", ts=0.0)
    assert "134567890123456789" not in repr(raw)


WIRE = (f"]Q1{EMPI}:1\r\n]C0S2024000001\r".encode() + "检验\r".encode("gbk")
        + b"134567890123456789\r")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=12))
def test_any_chunking_gives_the_same_scans(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [WIRE[a:b] for a, b in zip([0, *points], [*points, len(WIRE)], strict=True)]
    dec = FrameDecoder(FrameFormat(), Clock())
    out: list[object] = []
    for c in chunks:
        out += dec.feed(c)
    assert scans(out) == [(f"{EMPI}:1", "qr"), ("S2024000001", "code128"), ("检验", None),
                          ("134567890123456789", None)]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash_and_stay_bounded(data: bytes) -> None:
    dec = FrameDecoder(FrameFormat(max_frame=64), Clock())
    for item in dec.feed(data):
        assert isinstance(item, RawScan | FrameTooLong | FrameDecodeError)
    assert dec.pending <= 64
