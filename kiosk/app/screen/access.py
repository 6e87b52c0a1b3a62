"""Who may read the patient's screen: the kiosk browser, by a per-start secret.

Loopback is not a boundary: every local process can reach 127.0.0.1:8740, and
the screen carries the live camera preview of the patient's face, the masked
ID entry and the amounts. So the kiosk app makes a fresh secret each time it
starts (32 random bytes, hex), writes it 0600 to KIOSK_SCREEN_TOKEN_FILE
(systemd: /run/kiosk-app/screen-token, readable only by user `kiosk`), and
`GET /screen/state`, `/screen/events`, `/screen/camera.jpg|.mjpg` answer only
a caller that presents it:

- in the ``X-Screen-Token`` header (programs: the bench, tests), or
- in the HttpOnly, SameSite=Strict ``kiosk_screen`` cookie that
  ``POST /screen/session`` sets in exchange for the secret (the page: neither
  EventSource nor ``<img>`` can send a header). The cookie holds
  HMAC(secret, "screen-session"), so a new start (new secret) voids every old one.

The kiosk browser gets the secret from its launcher (kiosk.app.screen.launch)
in the URL's fragment, which is never sent to a server nor logged; the page
exchanges it and strips it with history.replaceState. Every refusal is the same
401 with the same body, before the route runs: nothing about the state leaks.
The page itself, its static files and the zh/en strings carry no patient data
and stay open, so the browser can always load the page that asks for the secret.
"""
from __future__ import annotations

import hashlib
import hmac
from http.cookies import SimpleCookie
from typing import Any

from firmware_bridge.access import new_token, read_token_file, token_matches, write_token_file

__all__ = ["COOKIE", "TOKEN_HEADER", "ScreenGate", "new_token", "read_token_file", "session_value", "write_token_file"]

TOKEN_HEADER = "X-Screen-Token"
COOKIE = "kiosk_screen"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
REFUSED = b'{"error":"unauthorized","message":"the patient\'s screen needs the kiosk browser\'s secret"}'


def session_value(token: str) -> str:
    """The cookie value for a secret: derived, so the cookie never carries the secret itself."""
    return hmac.new(token.encode("ascii"), b"kiosk-screen-session", hashlib.sha256).hexdigest()


class ScreenGate:
    """ASGI middleware for the screen's data paths: the secret (header) or its session cookie, or 401."""

    def __init__(self, app: Any, token: str, guarded: frozenset[str]) -> None:
        self.app, self.token, self.guarded = app, token, guarded
        self._session = session_value(token)
        self._header = TOKEN_HEADER.lower().encode()

    def allows(self, headers: Any) -> bool:
        presented, cookie = None, None
        for k, v in headers or ():
            if k == self._header:
                presented = v.decode("latin-1")
            elif k == b"cookie":
                c: SimpleCookie = SimpleCookie()
                try:
                    c.load(v.decode("latin-1"))
                except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookie
                    continue
                if COOKIE in c:
                    cookie = c[COOKIE].value
        # both compared, whichever is present, in constant time
        ok_header = token_matches(presented, self.token)
        ok_cookie = token_matches(cookie, self._session)
        return ok_header or ok_cookie

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.guarded or self.allows(scope.get("headers")):
            return await self.app(scope, receive, send)
        client = scope.get("client") or ("", 0)
        if client[0] not in LOOPBACK:  # the router's loopback-only refusal (403) answers a remote caller
            return await self.app(scope, receive, send)
        await refuse(send)


async def refuse(send: Any) -> None:
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(REFUSED)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": REFUSED})
