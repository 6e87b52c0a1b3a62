"""Where alert events go: a `Notifier` is anything with `send(event)`.

Events are queued in the fleet database's outbox in the same transaction that
raises or clears the alert, then delivered by the job (at least once, in order;
a receiver deduplicates by `alert_id` + `event`). A notifier that raises keeps
the event queued for the next pass.
"""
from __future__ import annotations

import logging
import threading
from typing import Protocol

import httpx

from kiosk.errors import RemoteError
from kiosk.fleet.models import AlertEvent

log = logging.getLogger("kiosk.fleet")


class Notifier(Protocol):
    def send(self, event: AlertEvent) -> None: ...


class WebhookNotifier:
    """POSTs the event as JSON; any answer but 2xx is a failure (the event stays queued)."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, headers: dict[str, str] | None = None,
                 client: httpx.Client | None = None) -> None:
        self.url = url
        self.client = client or httpx.Client(timeout=timeout_s, headers=headers or {})

    def send(self, event: AlertEvent) -> None:
        try:
            r = self.client.post(self.url, json=event.model_dump(mode="json"))
        except httpx.HTTPError as e:
            raise RemoteError(f"webhook {self.url}: {type(e).__name__}", code="webhook_unreachable") from None
        if not 200 <= r.status_code < 300:
            raise RemoteError(f"webhook {self.url} answered {r.status_code}", code="webhook_refused")


class LogNotifier:
    """The default when no webhook is configured: one log line per event."""

    def send(self, event: AlertEvent) -> None:
        log.warning("alert %s %s %s: %s", event.event, event.rule, event.terminal_id, event.summary)


class RecordingNotifier:
    """Test double: keeps every event; `fail_next` makes the next n sends raise."""

    def __init__(self) -> None:
        self.events: list[AlertEvent] = []
        self.fail_next = 0
        self._lock = threading.Lock()

    def send(self, event: AlertEvent) -> None:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise RemoteError("recording notifier told to fail", code="webhook_refused")
            self.events.append(event)

    def of(self, rule: str, terminal_id: str | None = None) -> list[str]:
        return [e.event for e in self.events if e.rule == rule and (terminal_id is None or e.terminal_id == terminal_id)]
