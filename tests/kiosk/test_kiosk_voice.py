"""Spoken prompts: off by default; when on, espeak-ng renders fixed texts to WAV."""

from __future__ import annotations

import shutil

import httpx

from kiosk.app import create_app
from kiosk.config import KioskConfig, UiConfig
from kiosk.edge_client import EdgeClient
from kiosk.voice import PROMPTS, speak


def client(voice: bool) -> httpx.AsyncClient:
    cfg = KioskConfig(ui=UiConfig(voice=voice))
    app = create_app(cfg, EdgeClient("http://127.0.0.1:9", "x"))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui")


async def test_voice_is_off_by_default():
    async with client(False) as c:
        assert (await c.get("/api/voice/insert_zh.wav")).status_code == 404


async def test_unknown_prompt_is_refused():
    assert await speak(KioskConfig(ui=UiConfig(voice=True)), "../../etc/passwd") is None


async def test_prompts_render_to_wav():
    # needs Debian espeak-ng (scripts/install.sh)
    assert shutil.which("espeak-ng"), "espeak-ng is not installed: run scripts/install.sh"
    async with client(True) as c:
        for key in ("insert_zh", "confirming_zh", "take_card_en"):
            r = await c.get(f"/api/voice/{key}.wav")
            assert r.status_code == 200 and r.content[:4] == b"RIFF", key
    assert set(PROMPTS) >= {"insert_zh", "insert_en", "confirming_zh", "scan_code_en"}
