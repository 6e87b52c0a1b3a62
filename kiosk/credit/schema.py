"""Credit tables. The journal (entries, postings) is append-only, enforced by triggers."""
from __future__ import annotations

from kiosk.storage import Migration

_APPEND_ONLY_PG_FN = """CREATE OR REPLACE FUNCTION credit_journal_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'the credit journal is append-only (% on %)', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'restrict_violation';
END $$ LANGUAGE plpgsql"""


def _append_only(table: str) -> list[dict[str, str]]:
    return [
        {"sqlite": f"""CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
             BEGIN SELECT RAISE(ABORT, 'the credit journal is append-only'); END""",
         "postgresql": f"""CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
             FOR EACH ROW EXECUTE FUNCTION credit_journal_append_only()"""},
        {"sqlite": f"""CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
             BEGIN SELECT RAISE(ABORT, 'the credit journal is append-only'); END"""},
    ]


MIGRATIONS = [
    Migration("credit.001_lines", [
        """CREATE TABLE credit_lines (
            id SERIAL_PK,
            holder TEXT NOT NULL UNIQUE,
            birth_date TEXT NOT NULL,
            insured_years INTEGER NOT NULL,
            profile TEXT NOT NULL,
            opened_day TEXT NOT NULL,
            limit_fen BIGINT NOT NULL,
            principal_fen BIGINT NOT NULL DEFAULT 0,
            holds_fen BIGINT NOT NULL DEFAULT 0,
            interest_unpaid_fen BIGINT NOT NULL DEFAULT 0,
            interest_paid_fen BIGINT NOT NULL DEFAULT 0,
            refunded_cash_fen BIGINT NOT NULL DEFAULT 0,
            accrued_through TEXT NOT NULL)""",
        """CREATE TABLE credit_members (
            id SERIAL_PK,
            line_id BIGINT NOT NULL REFERENCES credit_lines (id),
            member TEXT NOT NULL,
            relation TEXT NOT NULL,
            monthly_cap_fen BIGINT,
            consent_at TEXT NOT NULL,
            bound_day TEXT NOT NULL,
            unbound_day TEXT,
            active INTEGER NOT NULL DEFAULT 1)""",
        "CREATE UNIQUE INDEX credit_members_one_active ON credit_members (member) WHERE active = 1",
        """CREATE TABLE credit_draws (
            id SERIAL_PK,
            line_id BIGINT NOT NULL REFERENCES credit_lines (id),
            ref TEXT NOT NULL UNIQUE,
            payer TEXT NOT NULL,
            day TEXT NOT NULL,
            month TEXT NOT NULL,
            original_fen BIGINT NOT NULL CHECK (original_fen > 0),
            unpaid_fen BIGINT NOT NULL CHECK (unpaid_fen >= 0),
            refunded_fen BIGINT NOT NULL DEFAULT 0,
            from_hold INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX credit_draws_unpaid ON credit_draws (line_id, id) WHERE unpaid_fen > 0",
        "CREATE INDEX credit_draws_member_month ON credit_draws (line_id, payer, month)",
        """CREATE TABLE credit_holds (
            id SERIAL_PK,
            line_id BIGINT NOT NULL REFERENCES credit_lines (id),
            ref TEXT NOT NULL UNIQUE,
            payer TEXT NOT NULL,
            day TEXT NOT NULL,
            amount_fen BIGINT NOT NULL CHECK (amount_fen > 0),
            status TEXT NOT NULL DEFAULT 'open',
            captured_fen BIGINT,
            closed_day TEXT)""",
        """CREATE TABLE credit_entries (
            id SERIAL_PK,
            line_id BIGINT NOT NULL REFERENCES credit_lines (id),
            kind TEXT NOT NULL,
            day TEXT NOT NULL,
            ref TEXT,
            corrects BIGINT REFERENCES credit_entries (id),
            created_at TEXT NOT NULL)""",
        "CREATE INDEX credit_entries_line ON credit_entries (line_id, id)",
        """CREATE TABLE credit_postings (
            id SERIAL_PK,
            entry_id BIGINT NOT NULL REFERENCES credit_entries (id),
            line_id BIGINT NOT NULL,
            account TEXT NOT NULL,
            amount BIGINT NOT NULL,
            draw_id BIGINT,
            hold_id BIGINT)""",
        "CREATE INDEX credit_postings_entry ON credit_postings (entry_id)",
        "CREATE INDEX credit_postings_line ON credit_postings (line_id, account)",
        {"postgresql": _APPEND_ONLY_PG_FN},
        *_append_only("credit_entries"),
        *_append_only("credit_postings"),
    ]),
    Migration("credit.002_unpaid_by_day", [
        "CREATE INDEX credit_draws_unpaid_day ON credit_draws (line_id, day, id) WHERE unpaid_fen > 0",
    ]),
    Migration("credit.003_owner", [
        # who made each draw and hold (the payee institution and its terminal): a refund, capture or
        # release is taken only from that institution; NULL on rows from before (no owner recorded)
        "ALTER TABLE credit_draws ADD COLUMN fixmedins_code TEXT",
        "ALTER TABLE credit_draws ADD COLUMN app_id TEXT",
        "ALTER TABLE credit_holds ADD COLUMN fixmedins_code TEXT",
        "ALTER TABLE credit_holds ADD COLUMN app_id TEXT",
    ]),
    Migration("credit.004_clearing_by_day", [
        # the bank's clearing statement (kiosk.services.bank.clearing): the day's entries, then per entry its
        # postings (credit_postings_entry) and draw (primary key), kept to the institution's
        "CREATE INDEX credit_entries_day ON credit_entries (day, id)",
    ]),
]

# senseless outpatient payment (issue 17): appended after the list, after whatever the list holds
MIGRATIONS.append(Migration("credit.005_mandates", [
    # standing authorisations of senseless outpatient payment (issue 17): the payer's word, signed by the
    # insurance centre (pay_auth purpose mandate), that one institution may draw a visit's cash share
    # without the payer present, within a per-visit and a per-day cap, until a Shanghai day, on the lines
    # named (own: the payer's line; family: the line the payer is bound to, with its holder recorded)
    """CREATE TABLE credit_mandates (
        id SERIAL_PK,
        mandate_id TEXT NOT NULL UNIQUE,
        payer TEXT NOT NULL,
        fixmedins_code TEXT NOT NULL,
        app_id TEXT NOT NULL,
        per_visit_fen BIGINT NOT NULL CHECK (per_visit_fen > 0),
        per_day_fen BIGINT NOT NULL CHECK (per_day_fen >= per_visit_fen),
        until_day TEXT NOT NULL,
        lines TEXT NOT NULL,
        own_holder TEXT,
        family_holder TEXT,
        auth_id TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at TEXT NOT NULL,
        ended_at TEXT,
        ended_by TEXT)""",
    # one active mandate per payer and institution: a new one replaces the old (both in one transaction)
    "CREATE UNIQUE INDEX credit_mandates_one_active ON credit_mandates (payer, fixmedins_code) "
    "WHERE state = 'active'",
    "CREATE INDEX credit_mandates_family ON credit_mandates (family_holder)",
    # a draw under a mandate names it and the visit (mdtrt_id): the caps are sums over these
    "ALTER TABLE credit_draws ADD COLUMN mandate_id TEXT",
    "ALTER TABLE credit_draws ADD COLUMN visit TEXT",
    "CREATE INDEX credit_draws_mandate ON credit_draws (mandate_id, visit) WHERE mandate_id IS NOT NULL",
    "CREATE INDEX credit_draws_mandate_day ON credit_draws (mandate_id, day) WHERE mandate_id IS NOT NULL",
]))
