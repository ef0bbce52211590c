"""The card photo: decoded from DDF1/EF07 of a personalised simulator, bad ones refused."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageDraw

from edge.devices.card import errors as E
from edge.devices.card.card_session import CardSession
from edge.devices.card.photo import MAX_PIXELS, decode_photo
from edge.devices.card.protocol import records as R
from edge.devices.card.sam_session import SamSession
from edge.devices.card.sim.cardos import HealthCardSim
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.transport import InProcessTransport

PIN = "246810"


def face_jpeg(size: tuple[int, int] = (90, 120), quality: int = 35) -> bytes:
    """A small colour ID-style portrait, as an issuer would personalise it."""
    img = Image.new("RGB", size, (40, 90, 200))
    d = ImageDraw.Draw(img)
    w, h = size
    d.ellipse((w // 4, h // 8, 3 * w // 4, h // 2), fill=(230, 190, 160))
    d.rectangle((w // 6, 5 * h // 8, 5 * w // 6, h), fill=(20, 20, 20))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def bomb_png() -> bytes:
    """A real 2000×2000 PNG (4 Mpx) that fits in the 3070-byte photo file."""
    out = io.BytesIO()
    Image.new("1", (2000, 2000), 1).save(out, "PNG", optimize=True)
    return out.getvalue()


def png_with_declared_size(width: int, height: int) -> bytes:
    """A 1×1 PNG whose header claims another size (CRC fixed, so only the size lies)."""
    out = io.BytesIO()
    Image.new("L", (1, 1), 0).save(out, "PNG")
    data = bytearray(out.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def read_photo(card: HealthCardSim) -> R.Photo:
    sam = SamSession(InProcessTransport(SamSim(PIN)), PIN)
    return CardSession(InProcessTransport(card), sam).read_photo()


def test_personalised_jpeg_reads_back_decoded() -> None:
    jpeg = face_jpeg()
    assert len(jpeg) <= R.PHOTO_MAX - 2
    photo = decode_photo(read_photo(HealthCardSim.from_holder(photo=jpeg)))
    assert (photo.width, photo.height, photo.format, photo.mode) == (90, 120, "JPEG", "RGB")
    assert photo.image == jpeg
    assert photo.describe() == {"width": 90, "height": 120, "format": "JPEG", "mode": "RGB",
                                "bytes": len(jpeg)}


def test_re_encodes_to_png_and_jpeg_with_the_same_pixels() -> None:
    photo = decode_photo(face_jpeg())
    png = Image.open(io.BytesIO(photo.to_png()))
    assert (png.format, png.size) == ("PNG", (90, 120))
    assert png.convert("RGB").tobytes() == Image.open(io.BytesIO(photo.image)).tobytes()
    again = Image.open(io.BytesIO(photo.encode("jpg")))
    assert (again.format, again.size, again.mode) == ("JPEG", (90, 120), "RGB")
    with pytest.raises(ValueError, match="tiff"):
        photo.encode("tiff")


def test_palette_and_grey_photos_re_encode() -> None:
    out = io.BytesIO()
    Image.new("P", (10, 12), 3).save(out, "GIF")
    gif = decode_photo(out.getvalue())
    assert (gif.format, gif.mode) == ("GIF", "P")
    assert Image.open(io.BytesIO(gif.to_jpeg())).mode == "RGB"  # JPEG has no palette
    assert Image.open(io.BytesIO(gif.to_png())).size == (10, 12)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_undecodable_photo_on_the_card_is_a_photo_data_error(damage: str) -> None:
    jpeg = face_jpeg()
    image = {"truncated": jpeg[: len(jpeg) // 2], "garbage": b"\xff\xd8\xff" + b"\x5a" * 400,
             "empty": b""}[damage]
    raw = read_photo(HealthCardSim.from_holder(photo=image))
    with pytest.raises(E.PhotoDataError) as e:
        decode_photo(raw)
    err = e.value
    assert isinstance(err, E.CardDataError) and err.file == "DDF1/EF07"
    assert err.code == "photo_data_error" and err.message_zh.startswith("照片数据错误")
    assert err.to_dict()["file"] == "DDF1/EF07"


def test_length_prefix_shorter_than_the_image_is_a_photo_data_error() -> None:
    jpeg = face_jpeg()
    card = HealthCardSim.from_holder(photo=jpeg)
    card.set_binary("DDF1/EF07", (len(jpeg) - 200).to_bytes(2, "big"))  # prefix lies
    raw = read_photo(card)
    assert len(raw.image) == len(jpeg) - 200
    with pytest.raises(E.PhotoDataError, match="DDF1/EF07"):
        decode_photo(raw)


def test_length_prefix_beyond_the_file_is_a_photo_data_error() -> None:
    card = HealthCardSim.from_holder(photo=face_jpeg())
    card.set_binary("DDF1/EF07", b"\x0c\x00")  # 3072 > 3070
    with pytest.raises(E.PhotoDataError) as e:
        read_photo(card)
    assert e.value.file == "DDF1/EF07" and e.value.message_zh == "照片数据错误"


def test_a_small_file_with_huge_dimensions_is_refused_before_decoding() -> None:
    bomb = bomb_png()
    assert len(bomb) <= R.PHOTO_MAX - 2
    raw = read_photo(HealthCardSim.from_holder(photo=bomb))
    with pytest.raises(E.PhotoDataError, match="2000x2000"):
        decode_photo(raw)
    assert decode_photo(raw, max_pixels=4_000_000).width == 2000  # the limit is the reason


def test_lying_header_dimensions_are_refused() -> None:
    with pytest.raises(E.PhotoDataError, match="more than 1000000 pixels") as e:
        decode_photo(png_with_declared_size(65535, 65535))
    assert e.value.message_zh == "照片数据错误：图像尺寸异常"
    with pytest.raises(E.PhotoDataError, match="5000x5000"):
        decode_photo(png_with_declared_size(5000, 5000))
    with pytest.raises(E.PhotoDataError):  # small but inconsistent with the pixel data
        decode_photo(png_with_declared_size(300, 300))
    assert MAX_PIXELS > 300 * 300  # refused for the broken data, not for its size


def test_other_formats_are_not_offered_to_pillow() -> None:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "TIFF")
    with pytest.raises(E.PhotoDataError, match="not a JPEG, PNG, BMP or GIF"):
        decode_photo(out.getvalue())
