"""Tables of the fleet service (prefix `fleet_`), on kiosk.storage (SQLite or PostgreSQL).

Times are epoch milliseconds (BIGINT) so windows are plain comparisons. The
heartbeat history keeps the counts as columns for the aggregates (alerts and
rollout comparison) and the whole accepted body as JSON; the job deletes rows
older than `history_days`.
"""
from __future__ import annotations

from kiosk.storage import Migration

MIGRATIONS = [
    Migration("fleet.001_terminals", [
        """CREATE TABLE fleet_terminals (
            terminal_id TEXT PRIMARY KEY,
            institution TEXT NOT NULL,
            district TEXT NOT NULL,
            alg TEXT NOT NULL,
            key_id TEXT NOT NULL,
            public_key TEXT NOT NULL,
            status TEXT NOT NULL,
            registered_ms BIGINT NOT NULL,
            last_seen_ms BIGINT,
            last_seq BIGINT NOT NULL DEFAULT 0,
            app_version TEXT NOT NULL DEFAULT '',
            model_pack TEXT NOT NULL DEFAULT '',
            mcu_firmware TEXT NOT NULL DEFAULT '',
            paper TEXT NOT NULL DEFAULT 'unknown',
            cover TEXT NOT NULL DEFAULT 'unknown',
            camera TEXT NOT NULL DEFAULT 'unknown',
            bridge TEXT NOT NULL DEFAULT 'unknown',
            unresolved INTEGER NOT NULL DEFAULT 0,
            refunds_pending INTEGER NOT NULL DEFAULT 0,
            dayend_day TEXT,
            dayend_result TEXT NOT NULL DEFAULT 'not_run')""",
        "CREATE INDEX fleet_terminals_place ON fleet_terminals (institution, district)",
        """CREATE TABLE fleet_heartbeats (
            id SERIAL_PK,
            terminal_id TEXT NOT NULL,
            received_ms BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            sessions INTEGER NOT NULL,
            failures INTEGER NOT NULL,
            liveness_rejects INTEGER NOT NULL,
            match_rejects INTEGER NOT NULL,
            lockouts INTEGER NOT NULL,
            crashes INTEGER NOT NULL,
            body TEXT NOT NULL)""",
        "CREATE INDEX fleet_heartbeats_time ON fleet_heartbeats (received_ms)",
        "CREATE INDEX fleet_heartbeats_terminal ON fleet_heartbeats (terminal_id, received_ms)",
        """CREATE TABLE fleet_alerts (
            id SERIAL_PK,
            terminal_id TEXT NOT NULL,
            rule TEXT NOT NULL,
            severity TEXT NOT NULL,
            summary TEXT NOT NULL,
            raised_ms BIGINT NOT NULL,
            cleared_ms BIGINT)""",
        "CREATE UNIQUE INDEX fleet_alerts_open ON fleet_alerts (terminal_id, rule) WHERE cleared_ms IS NULL",
    ]),
    Migration("fleet.002_rollouts", [
        """CREATE TABLE fleet_artifacts (
            sha256 TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            version TEXT NOT NULL,
            size BIGINT NOT NULL,
            signature TEXT NOT NULL,
            blob BLOB NOT NULL,
            published_ms BIGINT NOT NULL)""",
        """CREATE TABLE fleet_rollouts (
            id SERIAL_PK,
            kind TEXT NOT NULL,
            artifact_sha256 TEXT NOT NULL REFERENCES fleet_artifacts (sha256),
            stage INTEGER NOT NULL,
            status TEXT NOT NULL,
            created_ms BIGINT NOT NULL,
            stage_started_ms BIGINT NOT NULL,
            reason TEXT NOT NULL DEFAULT '')""",
        "CREATE UNIQUE INDEX fleet_rollouts_one_live ON fleet_rollouts (kind) WHERE status IN ('active', 'halted')",
        """CREATE TABLE fleet_rollout_terminals (
            rollout_id BIGINT NOT NULL,
            terminal_id TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            updated_ms BIGINT NOT NULL,
            PRIMARY KEY (rollout_id, terminal_id))""",
    ]),
]
