"""Optional spoken prompts: espeak-ng on this machine renders a WAV the page plays.

Off by default (``ui.voice``). Only fixed prompt texts are spoken — never a name or a number
from the session — so nothing personal goes through the synthesiser or its cache.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import Any

log = logging.getLogger("kiosk.voice")

__all__ = ["PROMPTS", "speak"]

#: key → (language, text). Keys are what the page asks for.
PROMPTS: dict[str, tuple[str, str]] = {
    "insert_zh": ("cmn", "请插入您的居民健康卡，或出示电子健康卡二维码"),
    "insert_en": ("en", "Please insert your health card, or show your e-health QR code"),
    "take_card_zh": ("cmn", "请取走凭条和您的健康卡"),
    "take_card_en": ("en", "Please take your slip and your card"),
    "take_out_zh": ("cmn", "请取走您的卡"),
    "take_out_en": ("en", "Please take your card"),
    "confirming_zh": ("cmn", "正在确认支付结果，请勿重复支付"),
    "confirming_en": ("en", "Payment being confirmed. Do not pay again."),
    "scan_code_zh": ("cmn", "请将付款码对准扫码窗口"),
    "scan_code_en": ("en", "Please hold your payment code to the scanner"),
}

_cache: dict[str, bytes] = {}


async def speak(cfg: Any, key: str) -> bytes | None:
    """The WAV for prompt ``key``, or None (voice off, unknown key, no espeak-ng)."""
    if not cfg.ui.voice or key not in PROMPTS:
        return None
    if key in _cache:
        return _cache[key]
    exe = shutil.which("espeak-ng")
    if exe is None:
        log.warning("voice prompts are on but espeak-ng is not installed")
        return None
    voice, words = PROMPTS[key]
    proc = await asyncio.create_subprocess_exec(
        exe, "-v", voice, "-s", "150", "--stdout", words,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    if proc.returncode != 0 or not out.startswith(b"RIFF"):
        log.warning("espeak-ng failed for prompt %s", key)
        return None
    _cache[key] = out
    return out
