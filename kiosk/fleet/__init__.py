"""Operating a city's fleet of terminals: signed heartbeats, alerts, staged rollout with automatic halt.

    service.py  FleetService: registry, heartbeats, alert rules, rollouts (no HTTP)
    app.py      FastAPI app (`kiosk fleet serve`), the operator page (page.py)
    agent.py    the terminal side: FleetAgent (heartbeat, idle-only install, rollback)
    rules.toml  the alert rules and rollout bounds an operator reads and edits
    models.py   the boundary: pydantic, extra fields forbidden, nothing personal
"""
