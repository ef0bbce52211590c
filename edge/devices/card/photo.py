"""Decode the card photo (DDF1/EF07) into an image: size, format, and a safe re-encode.

``protocol.records.Photo`` holds the raw bytes and stays pure; decoding needs Pillow and
lives here. The bytes come from a card, so they are untrusted input: only a few still-image
formats are offered to Pillow (no exotic decoders), the pixel count is checked from the
header before any pixel is decoded (a 3 KB JPEG can declare 65535×65535 — a decompression
bomb), and the whole image is decoded once so a truncated or corrupt file fails here, as a
``PhotoDataError``, not later in whoever displays it. Callers get a re-encoded copy, never
the card's bytes, so metadata and trailing junk in the file do not travel further.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from edge.devices.card.errors import PhotoDataError
from edge.devices.card.protocol.records import Photo

__all__ = ["MAX_PIXELS", "DecodedPhoto", "decode_photo"]

#: The card file holds ≤ 3070 bytes of image: ID-style photos there are about 100×126 to
#: 358×441 (the resident ID card's size). One megapixel is generous and still cheap
#: (≤ 4 MB decoded as RGBA).
MAX_PIXELS = 1_000_000

# What card issuers write (JPEG almost always; BMP/PNG/GIF seen in test cards). Naming the
# formats keeps Pillow from probing the bytes with every plugin it has.
_FORMATS = ("JPEG", "PNG", "BMP", "GIF")
_SAVE_MODES = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"),
               "JPEG": ("L", "RGB", "CMYK")}


@dataclass(frozen=True, slots=True)
class DecodedPhoto:
    """A photo that decoded completely; ``image`` is the card's bytes as read."""

    width: int
    height: int
    format: str  # "JPEG", "PNG", "BMP", "GIF" (Pillow's names)
    mode: str  # Pillow mode: "L", "RGB", "P", …
    image: bytes

    def _open(self) -> Image.Image:
        # Decoded once already in decode_photo, so this cannot fail or be a bomb.
        img = Image.open(io.BytesIO(self.image), formats=_FORMATS)
        img.load()
        return img

    def to_png(self) -> bytes:
        """The photo re-encoded as PNG (lossless, no metadata copied)."""
        img = self._open()
        if img.mode not in _SAVE_MODES["PNG"]:
            img = img.convert("RGBA" if "A" in img.mode else "RGB")
        out = io.BytesIO()
        img.save(out, "PNG")
        return out.getvalue()

    def to_jpeg(self, quality: int = 90) -> bytes:
        """The photo re-encoded as JPEG (no EXIF or other metadata copied)."""
        img = self._open()
        if img.mode not in _SAVE_MODES["JPEG"]:
            img = img.convert("RGB")
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality)
        return out.getvalue()

    def encode(self, fmt: str) -> bytes:
        """Re-encode as ``"png"`` or ``"jpeg"``."""
        if fmt.lower() == "png":
            return self.to_png()
        if fmt.lower() in ("jpeg", "jpg"):
            return self.to_jpeg()
        raise ValueError(f"unsupported output format {fmt!r} (png or jpeg)")

    def describe(self) -> dict[str, object]:
        """Size/format summary for logs and ``ykt card read`` (no image bytes)."""
        return {"width": self.width, "height": self.height, "format": self.format,
                "mode": self.mode, "bytes": len(self.image)}


def decode_photo(photo: Photo | bytes, *, max_pixels: int = MAX_PIXELS) -> DecodedPhoto:
    """Decode and check the card photo; PhotoDataError for anything but a sane image."""
    data = photo.image if isinstance(photo, Photo) else bytes(photo)
    if not data:
        raise PhotoDataError("Photo is empty", "照片数据错误：照片为空")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make it an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_FORMATS)
            width, height = img.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise PhotoDataError(
                    f"Photo declares {width}x{height} pixels (limit {max_pixels})",
                    "照片数据错误：图像尺寸异常")
            img.load()  # decodes every pixel: truncation and corruption surface here
            fmt, mode = str(img.format), img.mode
    except PhotoDataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check, in open(), for sizes far beyond ours (≥ 89 Mpx).
        raise PhotoDataError(f"Photo declares more than {max_pixels} pixels: {exc}",
                             "照片数据错误：图像尺寸异常") from exc
    except UnidentifiedImageError as exc:
        raise PhotoDataError("Photo is not a JPEG, PNG, BMP or GIF image",
                             "照片数据错误：无法识别的图像格式") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # UnidentifiedImageError is an OSError; truncated data raises OSError on load;
        # some plugins raise SyntaxError/ValueError/EOFError on malformed headers.
        raise PhotoDataError(f"Photo is not a decodable image: {exc}",
                             "照片数据错误：无法解码") from exc
    return DecodedPhoto(width, height, fmt, mode, data)
