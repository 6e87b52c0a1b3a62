"""The demo console (`kiosk demo --serve` only): a page at /demo/ that plays the
parts a person at a browser cannot: the POS sending a bill, who stands in
front of the (simulated) camera, the keypad of the (simulated) MCU, paper in
the printer. Everything still goes through the real paths: the POS request is
signed and sent over HTTP, keys are KEY events on the serial link.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, Literal

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from kiosk.errors import InputError

_PAGE = """<!doctype html><html lang="zh"><head><meta charset="utf-8"><title>Demo console</title>
<style>body{font:16px sans-serif;margin:1em;max-width:70em}button{font-size:1em;margin:.2em;padding:.4em .8em}
iframe{width:100%;height:34em;border:1px solid #888}section{margin:.6em 0}#out{white-space:pre-wrap;background:#eee;padding:.5em}</style>
</head><body><h2>Kiosk demo console</h2>
<section><b>POS: send a bill for</b> <span id="people"></span></section>
<section><b>Camera:</b> <span id="scenes"></span></section>
<section><b>Keypad:</b> <span id="keys"></span> <input id="typed" size="22" placeholder="digits, then Send">
<button onclick="send(document.getElementById('typed').value)">Send</button></section>
<section><b>Printer:</b> <button onclick="post('printer',{paper:'out'})">paper out</button>
<button onclick="post('printer',{paper:'in'})">paper in</button></section>
<div id="out"></div>
<iframe id="screen"></iframe>
<script>
// the screen's secret came in this page's fragment (printed by `kiosk demo --serve`); hand it on the same way
document.getElementById('screen').src='/screen/'+location.hash; history.replaceState(null,'',location.pathname);
async function post(p,b){const r=await fetch('/demo/'+p,{method:'POST',headers:{'Content-Type':'application/json'},body:JSON.stringify(b)});
 const j=await r.json(); document.getElementById('out').textContent=JSON.stringify(j,null,1); return j;}
function send(k){return post('keys',{keys:k});}
async function order(psn){const j=await post('order',{psn_no:psn}); poll(j.order_id);}
async function poll(id){for(let i=0;i<240;i++){const r=await fetch('/demo/orders/'+id);const j=await r.json();
 document.getElementById('out').textContent=JSON.stringify(j,null,1); if(!['pending','running'].includes(j.status))return;
 await new Promise(r=>setTimeout(r,500));}}
fetch('/demo/people').then(r=>r.json()).then(ps=>{const e=document.getElementById('people');
 for(const p of ps){const b=document.createElement('button');b.textContent=p.psn_name+' ('+p.psn_no+')';b.onclick=()=>order(p.psn_no);e.appendChild(b);}
 const s=document.getElementById('scenes');for(const [k,v] of [['nobody','nobody'],['spoof','printed-photo attack'],['two','two people']].concat(ps.map(p=>[p.psn_no,p.psn_name]))){
 const b=document.createElement('button');b.textContent=v;b.onclick=()=>post('camera',{scene:k});s.appendChild(b);}});
const ks=document.getElementById('keys');for(const [k,v] of [...'0123456789X'].map(c=>[c,c]).concat([['<bs>','⌫'],['<enter>','Enter 确认'],['<cancel>','Cancel 取消']])){
 const b=document.createElement('button');b.textContent=v;b.onclick=()=>send(k);ks.appendChild(b);}
</script></body></html>"""


class OrderReq(BaseModel):
    psn_no: str = Field(max_length=30)


class CameraReq(BaseModel):
    scene: str = Field(max_length=30)


class KeysReq(BaseModel):
    keys: str = Field(max_length=60, pattern=r"^([0-9X ]|<bs>|<enter>|<cancel>)*$")


class PrinterReq(BaseModel):
    paper: Literal["in", "out"]


def mount_demo_console(app: FastAPI, stack: Any, bill: dict[str, Any], scenes: dict[str, list[Any]]) -> None:
    r = APIRouter(prefix="/demo", tags=["demo"], include_in_schema=False)
    counter = itertools.count(1)

    @r.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return _PAGE

    @r.get("/people")
    async def people() -> list[dict[str, str]]:
        return [{"psn_no": p["psn_no"], "psn_name": p["psn_name"]} for p in stack.demo_people]

    @r.post("/order")
    async def order(req: OrderReq) -> dict[str, Any]:
        if req.psn_no not in scenes:
            raise InputError(f"no demo person {req.psn_no!r}", field="psn_no")
        stack.camera.show(scenes[req.psn_no])
        oid = f"WEB-{int(time.time())}-{next(counter)}"
        pos = stack.pos()
        try:
            resp = await asyncio.to_thread(pos.create, {"order_id": oid, "bill": bill})
        finally:
            pos.close()
        return {"order_id": oid, "http": resp.status_code, **resp.json()}

    @r.get("/orders/{order_id}")
    async def get(order_id: str) -> dict[str, Any]:
        pos = stack.pos()
        try:
            resp = await asyncio.to_thread(pos.get, order_id)
        finally:
            pos.close()
        return resp.json()

    @r.post("/camera")
    async def camera(req: CameraReq) -> dict[str, Any]:
        if req.scene not in scenes:
            raise InputError(f"unknown scene {req.scene!r}", field="scene")
        stack.camera.show(scenes[req.scene])
        return {"camera": req.scene}

    @r.post("/keys")
    async def keys(req: KeysReq) -> dict[str, Any]:
        return {"result": await asyncio.to_thread(stack.bridge.sim, f"keys {req.keys}")}

    @r.post("/printer")
    async def printer(req: PrinterReq) -> dict[str, Any]:
        return {"result": await asyncio.to_thread(stack.bridge.sim, f"paper {req.paper}")}

    app.include_router(r)
