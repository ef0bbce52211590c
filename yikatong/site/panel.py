"""The site-in-a-box's simulated-hardware panel: insert/remove virtual cards, see the paper."""

from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from yikatong.common.privacy import mask_id_number, mask_name

__all__ = ["PanelServer", "create_panel", "start_panel"]


class ScanIn(BaseModel):
    """Text the simulated 2D scanner reads (payment code, specimen barcode, badge, QR)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=512)


class PaperIn(BaseModel):
    """Printer paper switches: out of paper now, or the roll ends after N lines."""

    model_config = ConfigDict(extra="forbid")
    paper_out: bool = False
    lines_left: int | None = Field(default=None, ge=0, le=10_000)


def create_panel(site: Any) -> FastAPI:
    """Build the panel app for a running ``yikatong.site.demo.Site``."""
    from yikatong.site.data import CARD_VARIANTS, DEMO_PATIENTS

    app = FastAPI(title="Yikatong simulated hardware", docs_url=None, redoc_url=None)

    def term(dev: str) -> Any:
        try:
            return site.terminal(dev)
        except KeyError:
            raise HTTPException(404, f"no terminal {dev}") from None

    @app.post("/api/{dev}/card/{idx}")
    def insert(dev: str, idx: int) -> dict[str, Any]:
        if not 0 <= idx < len(DEMO_PATIENTS):
            raise HTTPException(404, "no such demo card")
        site.insert_card(term(dev).device_id, DEMO_PATIENTS[idx])
        return {"inserted": idx}

    @app.post("/api/{dev}/bad-card/{variant}")
    def insert_bad(dev: str, variant: str, idx: int = 0) -> dict[str, Any]:
        # Expired and faulty cards are the selected patient's card with that fault; the
        # lost card is the one the platform has on its lost-card list.
        if variant not in CARD_VARIANTS or not 0 <= idx < len(DEMO_PATIENTS):
            raise HTTPException(404, "no such demo card")
        site.insert_card(term(dev).device_id, DEMO_PATIENTS[idx], variant)
        return {"inserted": idx, "variant": variant}

    @app.delete("/api/{dev}/card")
    def remove(dev: str) -> dict[str, Any]:
        site.remove_card(term(dev).device_id)
        return {"removed": True}

    @app.post("/api/{dev}/scan")
    def scan(dev: str, req: ScanIn) -> dict[str, Any]:
        # The simulated scanner hands the text to the daemon as a hardware scanner would;
        # the reply shows only what the daemon shows (payment codes masked).
        t = term(dev)
        token_file = Path(site.workdir) / t.device_id / "secrets" / "edge-api.token"
        r = httpx.post(f"http://127.0.0.1:{t.api_port}/v1/scan", json={"text": req.text},
                       headers={"Authorization": f"Bearer {token_file.read_text().strip()}"},
                       timeout=10)
        if r.status_code >= 400:
            raise HTTPException(r.status_code, "scan refused")
        return dict(r.json())

    @app.post("/api/{dev}/paper")
    def paper_fault(dev: str, req: PaperIn) -> dict[str, Any]:
        t = term(dev)
        t.printer.set_fault(paper_out=req.paper_out, paper_lines_left=req.lines_left)
        return {"paper_out": req.paper_out, "lines_left": req.lines_left}

    @app.get("/paper/{dev}/{name}")
    def paper(dev: str, name: str) -> FileResponse:
        out_dir = Path(term(dev).printer.out_dir)
        p = (out_dir / name).resolve()
        if p.parent != out_dir.resolve() or not p.is_file() or p.suffix != ".png":
            raise HTTPException(404, "no such paper")
        return FileResponse(p)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        cards = "".join(
            f"<option value='{i}'>{html.escape(mask_name(p['name']))} · "
            f"{html.escape(mask_id_number(p['id_number']))}</option>"
            for i, p in enumerate(DEMO_PATIENTS)
        )
        def bad(dev: str) -> str:
            return "".join(f"<button class='bad' data-variant='{v}' onclick=\"bad('{dev}','{v}')\""
                           f">{html.escape(label)}</button>" for v, label in CARD_VARIANTS.items())

        rows = []
        for t in site.terminals:
            out_dir = Path(t.printer.out_dir)
            pngs = sorted(out_dir.glob("*.png"), key=lambda p: p.stat().st_mtime)[-3:]
            imgs = "".join(f"<img src='/paper/{t.device_id}/{p.name}' alt='paper'>"
                           for p in reversed(pngs))
            state = "已插卡 card in" if t.patient_slot.is_inserted else "无卡 no card"
            rows.append(f"""<section><h2>{t.device_id} ({t.role}) — <a href="{t.ui_url}"
              target="_blank">{t.ui_url}</a></h2><p>读卡器 Reader: <b>{state}</b></p>
              <select id="c-{t.device_id}">{cards}</select>
              <button onclick="ins('{t.device_id}')">插卡 Insert card</button>
              <button onclick="rem('{t.device_id}')">拔卡 Remove card</button>
              <br>{bad(t.device_id)}
              <br><input id="s-{t.device_id}" size="32" placeholder="扫码内容 text to scan">
              <button onclick="scan('{t.device_id}')">扫码 Scan</button>
              <button onclick="paper('{t.device_id}', true)">缺纸 Paper out</button>
              <button onclick="paper('{t.device_id}', false)">装纸 Refill</button>
              <div class="paper">{imgs or '<i>尚未打印 nothing printed yet</i>'}</div></section>""")
        return f"""<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">
<title>模拟硬件 Simulated hardware</title><style>
body{{font-family:"Noto Sans CJK SC",sans-serif;margin:24px;background:#f4f6f8}}
section{{background:#fff;border-radius:12px;padding:16px 20px;margin-bottom:16px}}
button,select{{font-size:16px;padding:6px 12px;margin-right:8px}}
button.bad{{margin-top:8px;border:1px solid #b42318;color:#b42318;background:#fff}}
.paper img{{max-height:420px;border:1px solid #ddd;margin:8px 8px 0 0;background:#fff}}</style>
</head><body><h1>模拟硬件面板 Simulated hardware panel</h1>{''.join(rows)}
<script>
async function ins(d){{
  const card=document.getElementById('c-'+d).value;
  await fetch(`/api/${{d}}/card/${{card}}`,{{method:'POST'}});
  setTimeout(()=>location.reload(),800)}}
async function bad(d,v){{
  const card=document.getElementById('c-'+d).value;
  await fetch(`/api/${{d}}/bad-card/${{v}}?idx=${{card}}`,{{method:'POST'}});
  setTimeout(()=>location.reload(),800)}}
async function scan(d){{
  const el=document.getElementById('s-'+d);
  await fetch(`/api/${{d}}/scan`,{{method:'POST',headers:{{'Content-Type':'application/json'}},
    body:JSON.stringify({{text:el.value}})}});
  el.value=''}}
async function paper(d,out){{
  await fetch(`/api/${{d}}/paper`,{{method:'POST',headers:{{'Content-Type':'application/json'}},
    body:JSON.stringify({{paper_out:out}})}})}}
async function rem(d){{
  await fetch(`/api/${{d}}/card`,{{method:'DELETE'}});
  setTimeout(()=>location.reload(),500)}}
</script></body></html>"""

    return app


class PanelServer:
    """uvicorn in a background thread, stoppable."""

    def __init__(self, app: FastAPI, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="panel", daemon=True)

    def start(self) -> None:
        """Serve in the background."""
        self.thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self.server.should_exit = True
        self.thread.join(5)


def start_panel(site: Any, port: int) -> PanelServer:
    """Start the panel for ``site`` on ``port``."""
    panel = PanelServer(create_panel(site), port)
    panel.start()
    return panel
