"""The operator's page: terminals by institution and district, their state and open alerts.

Server-rendered HTML (no script needed); filters are a GET form, so a filtered
view is a link an operator can share. Everything shown is escaped.
"""
from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from typing import Any
from urllib.parse import urlencode

STATES = ("ok", "alerting", "offline", "revoked")
CSS = """
body{font:16px/1.4 system-ui,sans-serif;margin:1rem 2rem;color:#111;background:#fff}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:1.5rem}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ccc;padding:.3rem .5rem;text-align:left;
vertical-align:top}th{background:#eee}
.state{font-weight:bold;padding:0 .4rem;border:2px solid}.s-ok{color:#0a5a0a}.s-alerting{color:#8a4b00}
.s-offline{color:#a00}.s-revoked{color:#555}.sev-critical{color:#a00;font-weight:bold}.sev-warning{color:#8a4b00}
form.filters{display:flex;gap:1rem;flex-wrap:wrap;align-items:end;margin:1rem 0}label{display:flex;flex-direction:column}
.counts span{margin-right:1.5rem}
"""


def _when(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "never"
    mins = max(0, (now_ms - ms) // 60000)
    stamp = datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{stamp} ({mins} min ago)"


def _select(name: str, label: str, options: list[str], chosen: str) -> str:
    opts = [f'<option value=""{" selected" if not chosen else ""}>all</option>']
    for o in options:
        sel = " selected" if o == chosen else ""
        opts.append(f'<option value="{escape(o)}"{sel}>{escape(o)}</option>')
    return f'<label>{label}<select name="{name}" id="f-{name}">{"".join(opts)}</select></label>'


def render_page(rows: list[dict[str, Any]], everyone: list[dict[str, Any]], rollouts: list[dict[str, Any]],
                filters: dict[str, str], *, now_ms: int) -> str:
    insts = sorted({t["institution"] for t in everyone})
    dists = sorted({t["district"] for t in everyone})
    counts = {s: sum(1 for t in rows if t["state"] == s) for s in STATES}
    form = (f'<form class="filters" method="get" action="/fleet/">'
            f'{_select("institution", "Institution", insts, filters.get("institution", ""))}'
            f'{_select("district", "District", dists, filters.get("district", ""))}'
            f'{_select("state", "State", list(STATES), filters.get("state", ""))}'
            f'<label>Terminal id<input name="q" id="f-q" value="{escape(filters.get("q", ""))}"></label>'
            f'<button type="submit" id="apply">Filter</button> <a href="/fleet/">clear</a></form>')
    body = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in rows:
        groups.setdefault((t["institution"], t["district"]), []).append(t)
    for (inst, dist), ts in groups.items():
        body.append(f'<h2 class="group">{escape(inst)} · {escape(dist)} ({len(ts)})</h2>')
        body.append("<table><thead><tr><th>Terminal</th><th>State</th><th>Last heartbeat</th><th>Versions</th>"
                    "<th>Peripherals</th><th>Journal</th><th>Open alerts</th></tr></thead><tbody>")
        for t in ts:
            alerts = "".join(f'<li class="alert sev-{escape(a["severity"])}" data-rule="{escape(a["rule"])}">'
                             f'{escape(a["severity"])}: {escape(a["rule"])} — {escape(a["summary"])}</li>'
                             for a in t["alerts"])
            pack = (t["model_pack"] or "")[:12]
            body.append(
                f'<tr class="terminal" data-id="{escape(t["terminal_id"])}" data-state="{t["state"]}">'
                f'<td>{escape(t["terminal_id"])}</td>'
                f'<td><span class="state s-{t["state"]}">{t["state"]}</span></td>'
                f'<td>{_when(t["last_seen_ms"], now_ms)}</td>'
                f'<td>app {escape(t["app_version"] or "-")}<br>pack {escape(pack or "-")}<br>'
                f'MCU {escape(t["mcu_firmware"] or "-")}</td>'
                f'<td>paper {escape(t["paper"])}, cover {escape(t["cover"])}<br>camera {escape(t["camera"])},'
                f' bridge {escape(t["bridge"])}</td>'
                f'<td>{t["unresolved"]} unresolved, {t["refunds_pending"]} refunds<br>day-end'
                f' {escape(t["dayend_result"])}</td>'
                f'<td><ul>{alerts or "<li>none</li>"}</ul></td></tr>')
        body.append("</tbody></table>")
    if not rows:
        body.append('<p id="empty">No terminal matches these filters.</p>')
    ro = "".join(f'<li data-rollout="{r["id"]}">#{r["id"]} {escape(r["kind"])} {escape(r["version"])}: '
                 f'{escape(r["status"])} at {r["percent"]}% {escape(r.get("reason") or "")}</li>' for r in rollouts)
    summary = " ".join(f'<span id="count-{s}">{s}: {counts[s]}</span>' for s in STATES)
    share = urlencode({k: v for k, v in filters.items() if v})
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Fleet</title>'
            f'<meta name="viewport" content="width=device-width">'
            f'<meta http-equiv="refresh" content="60"><style>{CSS}</style></head><body>'
            f'<h1>Fleet: {len(rows)} of {len(everyone)} terminals</h1><p class="counts">{summary}</p>{form}'
            f'<p><small>link to this view: <code>/fleet/{"?" + escape(share) if share else ""}</code></small></p>'
            f'{"".join(body)}<h2>Rollouts</h2><ul id="rollouts">{ro or "<li>none</li>"}</ul></body></html>')


def render_login(error: str) -> str:
    err = f'<p role="alert" id="error">{escape(error)}</p>' if error else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Fleet login</title>'
            f'<style>{CSS}</style></head><body><h1>Fleet operator</h1>{err}'
            f'<form method="post" action="/fleet/login"><label>Operator token'
            f'<input type="password" name="token" id="token" autocomplete="off"></label>'
            f'<button type="submit" id="login">Open</button></form></body></html>')
