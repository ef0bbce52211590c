"""Authentication and secure-messaging scheme shared by the terminal, the SAM and the card.

docs/healthcard.md marks the 17-byte EXTERNAL AUTHENTICATE layout and the diversification
factors *unsure*, so they are parameters of ``AuthScheme`` (frozen data). One coherent
scheme is implemented end to end:

* cipher: SM4 (GB/T 32907, the national block cipher health-card SAMs use) or AES-128 —
  both 16-byte blocks from ``cryptography``;
* card factor: 8 bytes — the tail of the ASCII card number, or the tail of the ATR
  historical bytes (configurable);
* city factor: the 3-byte BCD city code padded to 8 bytes (pad byte and side configurable);
* key diversification: ``K_city = E(master, city ‖ ~city)``, ``K_card = E(K_city, card ‖
  ~card)`` (the PBOC two-level pattern, one block per level because the block is 16 bytes);
  ``levels="card"`` skips the city level;
* cryptogram: ``E(K_card, challenge(8) ‖ 80 00…00)``; EXTERNAL AUTHENTICATE data is the
  key version byte and the 16-byte cryptogram, in the order ``ext_auth_layout`` says;
* SAM commands (``sam_auth``): ``combined`` sends factor ‖ challenge in one 80DE (P1=01)
  that returns the cryptogram; ``split`` sends 80DE (P1=00) then 80FA, for SAMs that only
  know the two-step form;
* SM: data padded ISO 9797-1 method 2 and encrypted CBC (zero IV) under the diversified
  update key; MAC = first 4 bytes of the CBC-MAC (IV = challenge ‖ 00…) over
  ``CLA INS P1 P2 Lc ‖ cipher text``, padded method 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from edge.devices.card.errors import CardDataError, CardParameterError

__all__ = [
    "AuthScheme",
    "card_factor",
    "city_factor",
    "cryptogram",
    "decrypt",
    "diversify",
    "diversify_key",
    "encrypt",
    "ext_auth_data",
    "mac",
    "pad_m2",
    "parse_ext_auth_data",
    "sm_mac_input",
    "unpad_m2",
]

BLOCK = 16


@dataclass(frozen=True, slots=True)
class AuthScheme:
    """Parameters of the terminal ↔ SAM ↔ card authentication (all *unsure* in the spec)."""

    cipher: Literal["SM4", "AES-128"] = "SM4"
    card_factor_source: Literal["card_number", "atr_historical"] = "card_number"
    city_pad: int = 0xFF
    city_align: Literal["left", "right"] = "left"
    levels: Literal["city_card", "card"] = "city_card"
    ext_auth_layout: Literal["kv_first", "kv_last"] = "kv_first"
    key_version: int = 0x01
    sam_auth: Literal["combined", "split"] = "combined"


def _algo(scheme: AuthScheme, key: bytes) -> algorithms.SM4 | algorithms.AES:
    if len(key) != BLOCK:
        raise CardParameterError("key must be 16 bytes", "密钥长度错误")
    return algorithms.SM4(key) if scheme.cipher == "SM4" else algorithms.AES(key)


def _ecb(scheme: AuthScheme, key: bytes, block: bytes) -> bytes:
    enc = Cipher(_algo(scheme, key), modes.ECB()).encryptor()  # noqa: S305 - single block KDF
    return enc.update(block) + enc.finalize()


def pad_m2(data: bytes) -> bytes:
    """ISO 9797-1 padding method 2: 80 then zeros to a whole block."""
    out = data + b"\x80"
    return out + b"\x00" * (-len(out) % BLOCK)


def unpad_m2(data: bytes) -> bytes:
    """Remove method-2 padding (CardDataError when absent)."""
    stripped = data.rstrip(b"\x00")
    if not stripped.endswith(b"\x80"):
        raise CardDataError("Bad secure-messaging padding", "安全报文格式错误")
    return stripped[:-1]


def card_factor(scheme: AuthScheme, card_number: str, atr: bytes) -> bytes:
    """8-byte card factor from the card number or the ATR historical bytes."""
    if scheme.card_factor_source == "card_number":
        raw = card_number.encode("ascii", "replace")
    else:
        raw = atr_historical_bytes(atr)
    return raw[-8:].rjust(8, b"\x00")


def city_factor(scheme: AuthScheme, city_code: str) -> bytes:
    """8-byte city factor: 3-byte BCD city code padded with ``city_pad``."""
    digits = city_code.ljust(6, "F")[:6]
    try:
        bcd = bytes.fromhex(digits)
    except ValueError as exc:
        raise CardParameterError("city code must be digits", "城市代码错误") from exc
    pad = bytes((scheme.city_pad,)) * 5
    return bcd + pad if scheme.city_align == "left" else pad + bcd


def diversification_factor(scheme: AuthScheme, card_number: str, city_code: str,
                           atr: bytes) -> bytes:
    """The 16 bytes sent to the SAM with 80DE: card factor ‖ city factor."""
    return card_factor(scheme, card_number, atr) + city_factor(scheme, city_code)


def _level(scheme: AuthScheme, key: bytes, factor8: bytes) -> bytes:
    inverted = bytes(b ^ 0xFF for b in factor8)
    return _ecb(scheme, key, factor8 + inverted)


def diversify(scheme: AuthScheme, master: bytes, factor16: bytes) -> bytes:
    """Card key from an issuer master key and the 16-byte diversification factor."""
    if len(factor16) != 16:
        raise CardParameterError("factor must be 16 bytes", "分散因子错误")
    card8, city8 = factor16[:8], factor16[8:]
    key = master
    if scheme.levels == "city_card":
        key = _level(scheme, key, city8)
    return _level(scheme, key, card8)


def diversify_key(scheme: AuthScheme, master: bytes, card_number: str, city_code: str,
                  atr: bytes) -> bytes:
    """Card key for a given card (used by the issuer when personalising the card sim)."""
    return diversify(scheme, master, diversification_factor(scheme, card_number, city_code,
                                                            atr))


def cryptogram(scheme: AuthScheme, key: bytes, challenge: bytes) -> bytes:
    """16-byte authentication cryptogram of an 8-byte challenge."""
    if len(challenge) != 8:
        raise CardParameterError("challenge must be 8 bytes", "随机数长度错误")
    return _ecb(scheme, key, pad_m2(challenge))


def ext_auth_data(scheme: AuthScheme, crypt: bytes) -> bytes:
    """The 17-byte EXTERNAL AUTHENTICATE data in the configured layout."""
    kv = bytes((scheme.key_version,))
    return kv + crypt if scheme.ext_auth_layout == "kv_first" else crypt + kv


def parse_ext_auth_data(scheme: AuthScheme, data: bytes) -> tuple[int, bytes]:
    """Split EXTERNAL AUTHENTICATE data into (key version, cryptogram)."""
    if len(data) != 17:
        raise CardDataError("EXTERNAL AUTHENTICATE data must be 17 bytes", "认证数据错误")
    if scheme.ext_auth_layout == "kv_first":
        return data[0], data[1:]
    return data[16], data[:16]


def encrypt(scheme: AuthScheme, key: bytes, data: bytes) -> bytes:
    """SM data encryption: method-2 padding, CBC with a zero IV."""
    enc = Cipher(_algo(scheme, key), modes.CBC(b"\x00" * BLOCK)).encryptor()
    return enc.update(pad_m2(data)) + enc.finalize()


def decrypt(scheme: AuthScheme, key: bytes, data: bytes) -> bytes:
    """Inverse of ``encrypt``."""
    if not data or len(data) % BLOCK:
        raise CardDataError("Cipher text not a whole number of blocks", "安全报文格式错误")
    dec = Cipher(_algo(scheme, key), modes.CBC(b"\x00" * BLOCK)).decryptor()
    return unpad_m2(dec.update(data) + dec.finalize())


def mac(scheme: AuthScheme, key: bytes, iv: bytes, data: bytes) -> bytes:
    """4-byte CBC-MAC with method-2 padding and the given 16-byte IV."""
    if len(iv) != BLOCK:
        raise CardParameterError("MAC IV must be 16 bytes", "MAC 初始值错误")
    enc = Cipher(_algo(scheme, key), modes.CBC(iv)).encryptor()
    out = enc.update(pad_m2(data)) + enc.finalize()
    return out[-BLOCK:][:4]


def sm_mac_input(cla: int, ins: int, p1: int, p2: int, cipher_text: bytes) -> bytes:
    """Bytes covered by the SM MAC: header, Lc (including the MAC) and the cipher text."""
    return bytes((cla, ins, p1, p2, len(cipher_text) + 4)) + cipher_text


def challenge_iv(challenge: bytes) -> bytes:
    """16-byte MAC IV from an 8-byte card challenge."""
    return challenge.ljust(BLOCK, b"\x00")


def atr_historical_bytes(atr: bytes) -> bytes:
    """Historical bytes of an ATR (ISO 7816-3 T0/TDi walk); empty for a malformed ATR."""
    if len(atr) < 2:
        return b""
    t0 = atr[1]
    k = t0 & 0x0F
    i = 2
    y = t0 >> 4
    while True:
        td = None
        for bit in (0x1, 0x2, 0x4, 0x8):
            if y & bit:
                if i >= len(atr):
                    return b""
                if bit == 0x8:
                    td = atr[i]
                i += 1
        if td is None:
            break
        y = td >> 4
    return atr[i:i + k]
