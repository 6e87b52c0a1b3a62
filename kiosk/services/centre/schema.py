"""Tables of the insurance centre (registry, catalogue, settlements, account journal).

Money is BIGINT fen. Every change to a personal account is a row of
`centre_account_moves`, so `balc = balc_opening + sum(moves)` is checkable at
any time (`kiosk services check`). The enrolled face template is stored only
sealed (AES-256-GCM under the centre's at-rest key, bound to the psn_no).
"""
from __future__ import annotations

from kiosk.storage import Migration

MIGRATIONS = [
    Migration("centre.001_registry", [
        """CREATE TABLE centre_signins (
            sign_no TEXT PRIMARY KEY,
            app_id TEXT NOT NULL,
            opter TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE centre_institutions (
            fixmedins_code TEXT PRIMARY KEY,
            fixmedins_name TEXT NOT NULL,
            admdvs TEXT NOT NULL,
            level INTEGER NOT NULL)""",
        """CREATE TABLE centre_region_profiles (
            admdvs TEXT NOT NULL,
            insutype TEXT NOT NULL,
            med_type TEXT NOT NULL,
            profile TEXT NOT NULL,
            PRIMARY KEY (admdvs, insutype, med_type))""",
        """CREATE TABLE centre_catalogue (
            code TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            category TEXT NOT NULL,
            selfpay_prop TEXT,
            pric_uplmt_amt TEXT)""",
        """CREATE TABLE centre_persons (
            psn_no TEXT PRIMARY KEY,
            psn_name TEXT NOT NULL,
            certno TEXT NOT NULL UNIQUE,
            gend TEXT NOT NULL,
            brdy TEXT NOT NULL,
            insutype TEXT NOT NULL,
            psn_type TEXT NOT NULL,
            admdvs TEXT NOT NULL,
            insu_date TEXT NOT NULL,
            phone_last4 TEXT NOT NULL,
            conditions TEXT NOT NULL,
            balc_opening BIGINT NOT NULL,
            balc BIGINT NOT NULL,
            template_seal TEXT,
            activated INTEGER NOT NULL DEFAULT 0,
            activated_at TEXT,
            activation_seq BIGINT,
            fail_count INTEGER NOT NULL DEFAULT 0,
            locked_until TEXT)""",
        "CREATE INDEX centre_persons_gallery ON centre_persons (admdvs, activation_seq)",
        """CREATE TABLE centre_activation_seq (
            id INTEGER PRIMARY KEY,
            last BIGINT NOT NULL)""",
        "INSERT INTO centre_activation_seq (id, last) VALUES (1, 0)",
        """CREATE TABLE centre_ytd (
            psn_no TEXT NOT NULL,
            profile TEXT NOT NULL,
            year INTEGER NOT NULL,
            deductible_used BIGINT NOT NULL,
            pool_paid BIGINT NOT NULL,
            PRIMARY KEY (psn_no, profile, year))""",
        """CREATE TABLE centre_relations (
            psn_no TEXT NOT NULL,
            rel_psn_no TEXT NOT NULL,
            relation TEXT NOT NULL,
            PRIMARY KEY (psn_no, rel_psn_no))""",
        """CREATE TABLE centre_mulaid (
            psn_no TEXT PRIMARY KEY,
            auth_psn_no TEXT NOT NULL,
            relation TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE centre_settlements (
            setl_id TEXT PRIMARY KEY,
            msgid TEXT NOT NULL UNIQUE,
            infno TEXT NOT NULL,
            psn_no TEXT NOT NULL,
            profile TEXT NOT NULL,
            year INTEGER NOT NULL,
            fixmedins_code TEXT NOT NULL,
            mdtrt_id TEXT NOT NULL,
            state TEXT NOT NULL,
            result TEXT NOT NULL,
            medfee_sumamt BIGINT NOT NULL,
            fund_pay_sumamt BIGINT NOT NULL,
            acct_pay BIGINT NOT NULL,
            mulaid_psn_no TEXT,
            acct_mulaid_pay BIGINT NOT NULL,
            psn_cash_pay BIGINT NOT NULL,
            created_at TEXT NOT NULL,
            reversed_at TEXT,
            rev_msgid TEXT)""",
        "CREATE INDEX centre_settlements_psn ON centre_settlements (psn_no)",
        """CREATE TABLE centre_account_moves (
            id SERIAL_PK,
            psn_no TEXT NOT NULL,
            setl_id TEXT NOT NULL,
            amount BIGINT NOT NULL,
            kind TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
        "CREATE INDEX centre_account_moves_psn ON centre_account_moves (psn_no)",
        """CREATE TABLE centre_tombstones (
            msgid TEXT PRIMARY KEY,
            created_at TEXT NOT NULL)""",
    ]),
    Migration("centre.002_ownership", [
        # every pay_auth the centre signed (ids and amounts; the token itself is not kept)
        """CREATE TABLE centre_pay_auths (
            auth_id TEXT PRIMARY KEY,
            purpose TEXT NOT NULL,
            ref TEXT NOT NULL,
            psn_no TEXT NOT NULL,
            amount BIGINT NOT NULL,
            fixmedins_code TEXT NOT NULL,
            app_id TEXT NOT NULL,
            issued_at TEXT NOT NULL)""",
        "CREATE INDEX centre_pay_auths_ref ON centre_pay_auths (ref)",
        # requests refused because the object belongs to another institution (ids only, no person data)
        """CREATE TABLE centre_audit (
            id SERIAL_PK,
            at TEXT NOT NULL,
            event TEXT NOT NULL,
            app_id TEXT NOT NULL,
            fixmedins_code TEXT NOT NULL,
            infno TEXT NOT NULL,
            msgid TEXT NOT NULL,
            object_id TEXT NOT NULL)""",
    ]),
    Migration("centre.003_cohort", [
        # 1 = the enrolled template comes from a real face and may stand in the region's cohort (AS-norm);
        # the seed's synthetic people (random unit vectors) are 0
        "ALTER TABLE centre_persons ADD COLUMN cohort_member INTEGER NOT NULL DEFAULT 1",
    ]),
    Migration("centre.004_activation_locks", [
        # failed activations per (institution, typed ID number): a terminal locks an identity only at its own
        # institution, and an ID number nobody holds locks like one that exists (no oracle). The ID number
        # is kept as an HMAC under the centre's key, never in clear.
        """CREATE TABLE centre_activation_fails (
            fixmedins_code TEXT NOT NULL,
            certno_key TEXT NOT NULL,
            fail_count INTEGER NOT NULL,
            locked_until TEXT,
            PRIMARY KEY (fixmedins_code, certno_key))""",
    ]),
    Migration("centre.005_returns", [
        # the lines each settlement was made of: a return's re-settlement may only settle a part of them
        """CREATE TABLE centre_settlement_lines (
            setl_id TEXT NOT NULL,
            line_no INTEGER NOT NULL,
            code TEXT NOT NULL,
            pric TEXT NOT NULL,
            cnt TEXT NOT NULL,
            PRIMARY KEY (setl_id, line_no))""",
        # one re-settlement per returned original (claimed by the re-settling msgid, in its transaction);
        # by_face 0: made on the original's authority alone (no ecToken), so itself never an authority
        """CREATE TABLE centre_resettlements (
            orig_setl_id TEXT PRIMARY KEY,
            msgid TEXT NOT NULL UNIQUE,
            psn_no TEXT NOT NULL,
            fixmedins_code TEXT NOT NULL,
            by_face INTEGER NOT NULL,
            created_at TEXT NOT NULL)""",
    ]),
    Migration("centre.006_dayend_index", [
        # 3201/3202 (kiosk.services.centre.dayend.day_rows): an institution's settlements made, or reversed,
        # in a window of days; one index per side of the OR
        "CREATE INDEX centre_settlements_inst_made ON centre_settlements (fixmedins_code, created_at)",
        "CREATE INDEX centre_settlements_inst_reversed ON centre_settlements (fixmedins_code, reversed_at)",
    ]),
]

# senseless outpatient payment (issue 17): appended after the list, after whatever the list holds
MIGRATIONS.append(Migration("centre.007_visits", [
    # outpatient visits opened by face at registration (2201); charges carry the visit_token instead of
    # a fresh face while the visit is open and the day has not ended (senseless payment, issue 17)
    """CREATE TABLE centre_visits (
        mdtrt_id TEXT PRIMARY KEY,
        psn_no TEXT NOT NULL,
        fixmedins_code TEXT NOT NULL,
        app_id TEXT NOT NULL,
        insutype TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        exp BIGINT NOT NULL,
        state TEXT NOT NULL,
        closed_at TEXT)""",
    "CREATE INDEX centre_visits_psn ON centre_visits (psn_no)",
    # notices for the person's insurance app (ec.notify), once per (institution, notice_id)
    """CREATE TABLE centre_notices (
        fixmedins_code TEXT NOT NULL,
        notice_id TEXT NOT NULL,
        app_id TEXT NOT NULL,
        psn_no TEXT NOT NULL,
        kind TEXT NOT NULL,
        setl_id TEXT NOT NULL,
        mdtrt_id TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (fixmedins_code, notice_id))""",
    "CREATE INDEX centre_notices_psn ON centre_notices (psn_no, created_at)",
]))
