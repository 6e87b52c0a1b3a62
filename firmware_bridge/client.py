"""What the kiosk app uses to talk to the bridge process (httpx).

Every failure becomes a DeviceError with a message a counter clerk can act on:
``bridge_down`` when the bridge process is not running, ``disconnected`` when
the MCU cable is out, ``bridge_unauthorized`` when the bridge refuses the
token, the device's own status code otherwise.

Every call carries the bridge's per-boot token (``X-Bridge-Token``), read from
the token file the bridge writes at start (KIOSK_BRIDGE_TOKEN_FILE); after a
refusal the file is read again once, since a restarted bridge has a new one.
"""
from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import httpx

from firmware_bridge import DEFAULT_PORT
from firmware_bridge.access import TOKEN_HEADER, read_token_file
from kiosk.errors import DeviceError, InputError

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


class BridgeClient:
    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 5.0, http: httpx.Client | None = None,
                 token: str | None = None, token_file: Path | str | None = None) -> None:
        """``http``: an existing client (e.g. FastAPI's TestClient) instead of a new one.

        ``token``: the bridge's secret; else it is read from ``token_file`` (default:
        the configured KIOSK_BRIDGE_TOKEN_FILE). ``GET /v1/status`` works without one.
        """
        self.base_url = base_url
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)
        if token is None and token_file is None:
            from kiosk.config import load

            token_file = load().bridge_token_path()
        self.token_file = Path(token_file) if token_file else None  # "": none (status only)
        self._token = token if token is not None else read_token_file(self.token_file)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BridgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self._send(method, path, **kw)
        if r.status_code == 401 and self.token_file is not None:
            fresh = read_token_file(self.token_file)
            if fresh is not None and fresh != self._token:  # the bridge restarted with a new secret
                self._token = fresh
                r = self._send(method, path, **kw)
        if r.status_code == 401:
            raise DeviceError(f"the firmware bridge at {self.base_url} refused this caller: it needs the bridge's "
                              f"token ({self.token_file or 'none given'}; readable by the kiosk user only)",
                              code="bridge_unauthorized")
        return self._answer(r)

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {TOKEN_HEADER: self._token} if self._token else {}
        try:
            return self._http.request(method, path, headers=headers, **kw)
        except httpx.TimeoutException as e:
            raise DeviceError(f"the firmware bridge at {self.base_url} did not answer in time", code="bridge_timeout") from e
        except httpx.TransportError as e:
            raise DeviceError(f"the firmware bridge is not running at {self.base_url} ({type(e).__name__}); "
                "start it: systemctl start kiosk-bridge (logs: journalctl -u kiosk-bridge)", code="bridge_down") from e

    def _answer(self, r: httpx.Response) -> Any:
        if r.status_code < 400:
            return r.json()
        try:
            err = r.json().get("error") or {}
        except ValueError:
            err = {}
        if r.status_code == 422 and not err:
            detail = r.json().get("detail", [{}])
            first = detail[0] if isinstance(detail, list) and detail else {}
            field = ".".join(str(x) for x in first.get("loc", [])[1:]) or None
            raise InputError(first.get("msg", "invalid request"), field=field)
        msg = err.get("message") or f"bridge answered HTTP {r.status_code}"
        if r.status_code in (404, 409, 422):
            raise InputError(msg, code=err.get("code", "invalid_input"), field=err.get("field"))
        raise DeviceError(msg, code=err.get("code", "device_error"), field=err.get("field"))

    # --- API -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``state`` is "connected", "connecting" or "disconnected" (the screen shows it)."""
        return self._call("GET", "/v1/status")

    def frames(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/frames", params={"limit": limit})

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/events", params={"after": after})

    def start_id_entry(self, timeout_s: float = 120.0, reveal_last: int = 1) -> dict[str, Any]:
        return self._call("POST", "/v1/keypad/id-entry", json={"timeout_s": timeout_s, "reveal_last": reveal_last})

    def id_entry(self, session_id: str) -> dict[str, Any]:
        """``state``: active|accepted|cancelled|timed_out; ``display`` masked; ``value`` once accepted."""
        return self._call("GET", f"/v1/keypad/id-entry/{session_id}")

    def cancel_id_entry(self, session_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/keypad/id-entry/{session_id}")

    def wait_id_entry(self, session_id: str, *, poll: float = 0.1, timeout: float = 130.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            e = self.id_entry(session_id)
            if e["state"] != "active" or time.monotonic() > deadline:
                return e
            time.sleep(poll)

    def light(self, channel: str, level: int) -> None:
        self._call("POST", "/v1/light", json={"channel": channel, "level": level})

    def led(self, color: str, pattern: str = "solid") -> None:
        self._call("POST", "/v1/led", json={"color": color, "pattern": pattern})

    def buzz(self, pattern: str = "short", repeat: int = 1) -> None:
        self._call("POST", "/v1/buzzer", json={"pattern": pattern, "repeat": repeat})

    def print_escpos(self, data: bytes) -> dict[str, Any]:
        """``printed`` false with ``status`` "paper_out"/"cover_open" is an outcome, not an error."""
        return self._call("POST", "/v1/print", json={"escpos_b64": base64.b64encode(data).decode()})

    def print_receipt(self, title: str, lines: list[tuple[str, str] | str], footer: str = "", columns: int = 32) -> dict[str, Any]:
        return self._call("POST", "/v1/print/receipt", json={"title": title, "lines": lines, "footer": footer, "columns": columns})

    def printer(self) -> dict[str, Any]:
        return self._call("GET", "/v1/printer")

    def card(self) -> dict[str, Any]:
        return self._call("GET", "/v1/card")

    def self_test(self) -> dict[str, Any]:
        return self._call("POST", "/v1/self-test")

    def firmware_update(self, name: str) -> dict[str, Any]:
        """Start (or resume) a signed update from the ``.kfw`` file ``name`` in the bridge's firmware directory."""
        return self._call("POST", "/v1/firmware", json={"name": name})

    def firmware_job(self) -> dict[str, Any]:
        """``state``: idle|running|done|failed, ``offset``/``size``, ``error``."""
        return self._call("GET", "/v1/firmware")

    def sim(self, line: str) -> str:
        """Demo only: drive the simulated MCU of a bridge started with ``--serial sim``."""
        return self._call("POST", "/v1/sim", json={"line": line})["result"]
