"""Security commands.

    kiosk crypto envelope --app-id ID --app-secret SECRET [--sm2-key KEY.pem [--sm2-key-pass env:VAR|file:PATH]] PAYLOAD.json
    kiosk crypto open --app-id ID --app-secret SECRET --sm2-pub PUB.pem ENVELOPE.json
    kiosk audit verify [PATH] [--key-store DIR]
    kiosk keys init|rotate|show [--key-store DIR]

The key store defaults to <data_dir>/keys, the audit log to <data_dir>/audit.log;
a passphrase-protected store reads KIOSK_KEY_PASSPHRASE (never a flag: flags leak
into `ps` and shell history). An encrypted --sm2-key PEM takes its passphrase the
same way, named by --sm2-key-pass: `env:VAR` or `file:PATH` (first line), like
openssl's -passin, never the passphrase itself.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from kiosk import config
from kiosk.errors import InputError

PASSPHRASE_ENV = "KIOSK_KEY_PASSPHRASE"


def default_key_store() -> Path:
    return config.load().data_dir / "keys"


def default_audit_log() -> Path:
    return config.load().data_dir / "audit.log"


def passphrase() -> str | None:
    return os.environ.get(PASSPHRASE_ENV) or None


def register(subparsers: argparse._SubParsersAction) -> None:
    c = subparsers.add_parser("crypto", help="platform envelope (SM4 + SM2) tools",
                              description="Build or open the insurance platform's SM4/SM2 message envelope.")
    cs = c.add_subparsers(dest="crypto_command", metavar="ACTION")
    cs.required = True
    e = cs.add_parser("envelope", help="print the platform envelope for a JSON payload")
    e.add_argument("--app-id", required=True)
    e.add_argument("--app-secret", required=True)
    e.add_argument("--sm2-key", metavar="KEY.pem",
                   help="SM2 private key (PKCS#8 or SEC1 PEM, plain or encrypted); default: the device key store's SM2 key")
    e.add_argument("--sm2-key-pass", metavar="env:VAR|file:PATH",
                   help="where the passphrase of an encrypted --sm2-key is: an environment variable or a file")
    e.add_argument("--version", default=None, help="envelope version field")
    e.add_argument("payload", metavar="PAYLOAD.json", help="JSON object, or - for stdin")
    e.set_defaults(func=_envelope)
    o = cs.add_parser("open", help="verify and decrypt an envelope; prints the payload")
    o.add_argument("--app-id", required=True)
    o.add_argument("--app-secret", required=True)
    o.add_argument("--sm2-pub", metavar="PUB.pem", required=True, help="the signer's SM2 public key (PEM)")
    o.add_argument("envelope", metavar="ENVELOPE.json", help="envelope JSON, or - for stdin")
    o.set_defaults(func=_open)

    a = subparsers.add_parser("audit", help="audit trail tools")
    as_ = a.add_subparsers(dest="audit_command", metavar="ACTION")
    as_.required = True
    v = as_.add_parser("verify", help="check the hash chain; exit 0 intact, 1 naming the first bad record")
    v.add_argument("path", nargs="?", help="audit log (default <data_dir>/audit.log)")
    v.add_argument("--key-store", help="key store holding the audit key (default <data_dir>/keys)")
    v.set_defaults(func=_audit_verify)

    k = subparsers.add_parser("keys", help="device identity (key store)")
    ks = k.add_subparsers(dest="keys_command", metavar="ACTION")
    ks.required = True
    for name, fn, hlp in (("init", _keys_init, "generate the device identity"),
                          ("rotate", _keys_rotate, "add a new key version (old ones stay)"),
                          ("show", _keys_show, "print the public identity to register with the operator")):
        p = ks.add_parser(name, help=hlp)
        p.add_argument("--key-store", help="directory (default <data_dir>/keys)")
        if name == "init":
            p.add_argument("--device-id", help="device id (default: generated)")
        p.set_defaults(func=fn)


def _read(path: str, field: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}", field=field) from None


def _json(path: str, field: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # {"amt": "1", "amt": "9"} is ambiguous: refuse it rather than sign whichever came last.
        d: dict[str, Any] = {}
        for k, v in pairs:
            if k in d:
                raise InputError(f"{path} is not valid JSON: key {k!r} appears twice in one object", field=field)
            d[k] = v
        return d

    try:
        return json.loads(_read(path, field), object_pairs_hook=no_duplicates)
    except RecursionError:
        raise InputError(f"{path} is not valid JSON: nested too deeply", field=field) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON: {e}", field=field) from None


def key_passphrase(source: str | None) -> str | None:
    """The passphrase named by --sm2-key-pass (`env:VAR` or `file:PATH`)."""
    if source is None:
        return None
    kind, sep, ref = source.partition(":")
    if not sep or not ref or kind not in ("env", "file"):
        raise InputError("must be env:VAR or file:PATH (the passphrase itself is never a flag)", field="sm2_key_pass")
    if kind == "env":
        if ref not in os.environ:
            raise InputError(f"environment variable {ref} is not set", field="sm2_key_pass")
        return os.environ[ref]
    try:
        lines = Path(ref).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read passphrase file {ref}: {getattr(e, 'strerror', None) or e}",
                         field="sm2_key_pass") from None
    return lines[0] if lines else ""


def _print(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _envelope(args: argparse.Namespace) -> int:
    from kiosk.security.envelope import DEFAULT_VERSION, build_envelope
    from kiosk.security.keystore import KeyStore
    from kiosk.security.sm import load_private_pem

    payload = _json(args.payload, "payload")
    if not isinstance(payload, dict):
        raise InputError("the payload must be a JSON object", field="payload")
    if args.sm2_key:
        try:
            key = load_private_pem(_read(args.sm2_key, "sm2_key"), key_passphrase(args.sm2_key_pass))
        except InputError as e:
            if e.code == "passphrase_required":
                raise InputError(f"{args.sm2_key} is encrypted: name its passphrase with --sm2-key-pass env:VAR or "
                                 "file:PATH", code=e.code, field="sm2_key") from None
            raise
    elif args.sm2_key_pass:
        raise InputError("--sm2-key-pass goes with --sm2-key", field="sm2_key_pass")
    else:
        key = KeyStore.open(default_key_store(), passphrase=passphrase()).sm2_key()
    _print(build_envelope(payload, app_id=args.app_id, app_secret=args.app_secret, sm2_key=key,
                          version=args.version or DEFAULT_VERSION))
    return 0


def _open(args: argparse.Namespace) -> int:
    from kiosk.security.envelope import open_envelope
    from kiosk.security.sm import load_public_pem

    env = _json(args.envelope, "envelope")
    pub = load_public_pem(_read(args.sm2_pub, "sm2_pub"))
    opened = open_envelope(env, app_secret=args.app_secret, sm2_public_key=pub, expected_app_id=args.app_id)
    _print(opened.payload)
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from kiosk.security.audit import verify_log
    from kiosk.security.keystore import KeyStore

    path = Path(args.path) if args.path else default_audit_log()
    key = KeyStore.open(args.key_store or default_key_store(), passphrase=passphrase()).audit_key()
    report = verify_log(path, key)
    print(f"{path}: {report}", file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def _keys_init(args: argparse.Namespace) -> int:
    from kiosk.security.keystore import KeyStore

    ks = KeyStore.init(args.key_store or default_key_store(), device_id=args.device_id, passphrase=passphrase())
    _print(ks.public_identity())
    return 0


def _keys_rotate(args: argparse.Namespace) -> int:
    from kiosk.security.keystore import KeyStore

    from kiosk.security.audit import AuditLog

    store = Path(args.key_store) if args.key_store else default_key_store()
    ks = KeyStore.open(store, passphrase=passphrase())
    old = ks.current_kid
    new = ks.rotate()
    # Key rotation is a security event (issue: audit trail). The log sits beside the store
    # (<data_dir>/audit.log for the default <data_dir>/keys), chained with that store's audit key.
    AuditLog(store.parent / "audit.log", ks.audit_key()).append("key_rotation", old_kid=old, new_kid=new)
    _print(ks.public_identity())
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    from kiosk.security.keystore import KeyStore

    ks = KeyStore.open(args.key_store or default_key_store(), passphrase=passphrase())
    ident = ks.public_identity()
    ident["sm2_pem"] = ks.sm2_key().public_key().to_pem()
    ident["versions"] = ks.kids()  # type: ignore[assignment]
    _print(ident)
    return 0
