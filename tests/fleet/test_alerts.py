"""Every alert rule is raised and cleared (injected clock), and delivered through the notifier."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fastapi import FastAPI, Request

from kiosk.errors import ConfigError
from kiosk.fleet.notify import WebhookNotifier
from kiosk.fleet.rules import load_rules
from tests.app.screen.server import serve

from .conftest import Fleet


def _healthy(fleet: Fleet, n: int = 6):  # type: ignore[no-untyped-def]
    out = []
    for i in range(n):
        a = fleet.terminal(f"KIOSK-OK{i:04d}")
        out.append(a)
    return out


def _beat_all(agents, sessions: int = 10, rejects: dict[str, int] | None = None) -> None:  # type: ignore[no-untyped-def]
    for a in agents:
        r = min(sessions, (rejects or {}).get(a.terminal_id, 1))
        if sessions:
            a.counts.session("paid", n=sessions - r)
            a.counts.session("failed", "spoof_suspected", n=r)
        assert a.beat() is not None


def test_each_rule_raises_and_clears(fleet: Fleet) -> None:
    base = _healthy(fleet)
    paper, bridge, off, rej, backlog, dayend = (fleet.terminal(f"KIOSK-R{i}000") for i in range(6))
    agents = base + [paper, bridge, off, rej, backlog, dayend]
    paper.status.periph["paper"] = "out"
    bridge.status.periph["bridge"] = "disconnected"
    backlog.status.unresolved, backlog.status.refunds_pending = 2, 1
    dayend.status.dayend = {"day": "2026-12-03", "result": "mismatch"}
    _beat_all(agents, rejects={rej.terminal_id: 6})
    fleet.clock.advance(minutes=3)
    _beat_all([a for a in agents if a is not off])
    fleet.clock.advance(minutes=3)  # `off` has been silent for 6 minutes (> 5)
    _beat_all([a for a in agents if a is not off], sessions=0)
    res = fleet.svc.evaluate()
    assert res["raised"] == 6 and res["cleared"] == 0
    opened = {(a["terminal_id"], a["rule"]) for a in fleet.svc.open_alerts()}
    assert opened == {(paper.terminal_id, "paper_out"), (bridge.terminal_id, "bridge_disconnected"),
                      (off.terminal_id, "offline"), (rej.terminal_id, "liveness_rejects_high"),
                      (backlog.terminal_id, "recovery_backlog"), (dayend.terminal_id, "dayend_mismatch")}
    assert [e.event for e in fleet.notifier.events] == ["raised"] * 6
    ev = next(e for e in fleet.notifier.events if e.rule == "recovery_backlog")
    assert ev.summary == "3 payments/refunds waiting for recovery" and ev.institution == "H37020200001"
    # a second pass changes nothing and sends nothing
    assert fleet.svc.evaluate()["raised"] == 0 and len(fleet.notifier.events) == 6

    paper.status.periph["paper"] = "ok"
    bridge.status.periph["bridge"] = "connected"
    backlog.status.unresolved, backlog.status.refunds_pending = 0, 0
    dayend.status.dayend = {"day": "2026-12-04", "result": "ok"}
    fleet.clock.advance(minutes=61)  # the reject window has moved past the bad hour
    _beat_all(agents, sessions=10)
    res = fleet.svc.evaluate()
    assert res["cleared"] == 6 and res["raised"] == 0
    assert fleet.svc.open_alerts() == []
    for rule in ("paper_out", "bridge_disconnected", "offline", "liveness_rejects_high", "recovery_backlog",
                 "dayend_mismatch"):
        assert fleet.notifier.of(rule) == ["raised", "cleared"], rule


def test_reject_rate_needs_enough_sessions_and_a_real_gap(fleet: Fleet) -> None:
    base = _healthy(fleet, 4)
    few = fleet.terminal("KIOSK-FEW00")
    few.counts.session("failed", "spoof_suspected", n=5)  # 5 of 5, but under min_sessions (10)
    assert few.beat() is not None
    _beat_all(base, sessions=20, rejects={base[0].terminal_id: 4})  # 20% vs 5%: x4 but only +15 points
    fleet.svc.evaluate()
    assert fleet.svc.open_alerts() == []


def test_a_failed_delivery_is_retried_on_the_next_pass(fleet: Fleet) -> None:
    a = fleet.terminal("KIOSK-P0001")
    a.status.periph["paper"] = "out"
    a.beat()
    fleet.notifier.fail_next = 1
    res = fleet.svc.evaluate()
    assert res["raised"] == 1 and res["send_failed"] == 1 and fleet.notifier.events == []
    res = fleet.svc.evaluate()
    assert res["sent"] == 1 and fleet.notifier.of("paper_out") == ["raised"]


def test_revoked_terminals_do_not_alert(fleet: Fleet) -> None:
    a = fleet.terminal("KIOSK-V0001")
    a.status.periph["paper"] = "out"
    a.beat()
    fleet.svc.evaluate()
    fleet.svc.revoke(a.terminal_id)
    fleet.clock.advance(minutes=30)
    fleet.svc.evaluate()
    assert fleet.notifier.of("paper_out") == ["raised", "cleared"] and fleet.notifier.of("offline") == []


def test_webhook_notifier_posts_json_and_raises_on_refusal() -> None:
    got: list[dict] = []
    status = {"code": 200}
    hook = FastAPI()

    @hook.post("/hook")
    async def receive(request: Request):  # type: ignore[no-untyped-def]
        got.append(json.loads(await request.body()))
        from fastapi.responses import Response

        return Response(status_code=status["code"])

    from kiosk.fleet.models import AlertEvent

    ev = AlertEvent(event="raised", alert_id=7, rule="paper_out", severity="warning", terminal_id="KIOSK-1",
                    institution="H1", district="370202", summary="out of paper", at="2026-12-04T02:00:00+00:00")
    with serve(hook) as url:
        WebhookNotifier(url + "/hook").send(ev)
        status["code"] = 503
        with pytest.raises(Exception) as e:
            WebhookNotifier(url + "/hook").send(ev)
        assert getattr(e.value, "code", "") == "webhook_refused"
    assert got[0]["rule"] == "paper_out" and got[0]["alert_id"] == 7


def test_rules_file_mistakes_are_named(tmp_path: Path) -> None:
    p = tmp_path / "rules.toml"
    p.write_text('[[rule]]\nname = "x"\nkind = "peripheral"\nfield = "psn_no"\nvalues = ["out"]\n')
    with pytest.raises(ConfigError) as e:
        load_rules(p)
    assert e.value.field == "rule[0].field"
    p.write_text('[[rule]]\nname = "x"\nkind = "offline"\n')
    with pytest.raises(ConfigError, match="lacks minutes"):
        load_rules(p)
    p.write_text('[rollout]\nstages = [10, 1, 100]\n')
    with pytest.raises(ConfigError):
        load_rules(p)
    assert {r.name for r in load_rules().rules} >= {"offline", "paper_out", "bridge_disconnected",
                                                    "liveness_rejects_high", "recovery_backlog", "dayend_mismatch"}
