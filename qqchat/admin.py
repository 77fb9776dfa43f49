"""``qqchat-admin``: the operator's account commands (R9, R10), straight on the database.

It needs no running daemon: every daemon reads the same database, so a change made
here reaches the whole cluster (a disabled account's session is ended by the
daemons' sweep within seconds). Passwords come from a prompt or stdin, never from
the command line, where other local users could read them in the process list.

Exit status: 0 done; 1 refused (no such user, name taken, a name or password the
rules refuse, passwords that differ, a database newer than this qqchat); 2 a usage
error; 3 the database cannot be reached or opened.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

from qqchat.errors import ChatError, StartupError
from qqchat.passwords import DEFAULT_COST, MAX_COST, MIN_COST, hash_password
from qqchat.services.rules import check_password, check_user_name
from qqchat.storage.admin import Account, AdminStore, DatabaseUnavailableError, open_store
from qqchat.storage.migrations import MigrationError, SchemaStatus, status
from qqchat.storage.pool import DatabaseURLError, parse_database_url
from qqchat.storage.schema import latest

OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3
DEFAULT_DB = "sqlite:///qqchat.db"
LIST_DEFAULT, LIST_MAX = 100, 10_000

EPILOG = """\
exit status: 0 done; 1 refused (no such user, name taken, bad name or password, a
database newer than this qqchat); 2 usage error; 3 database unreachable or cannot
be opened.
A user is a name (exact, else case and width folded, as at login) or an all-digits id.
Passwords are read from a prompt (twice) on a terminal, else one line from stdin."""


class RefusedError(Exception):
    """What the operator asked cannot be done; exit 1 with this one-line message."""


def _now() -> int:
    return int(time.time() * 1000)


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _printable(name: str) -> str:
    """Names made before the R7 rules may hold characters a terminal would act on."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in name)


def _account_json(a: Account) -> dict[str, Any]:
    return {"id": a.id, "name": a.name, "created_at": a.created_at,
            "last_login": a.last_login or None, "admin": a.is_admin,
            "disabled": a.disabled, "disabled_at": a.disabled_at or None}


def read_password(name: str, stdin: TextIO) -> str:
    """Twice at a prompt on a terminal; else the first line of stdin, as a script pipes it."""
    if stdin.isatty():
        first = getpass.getpass(f"Password for {name}: ")
        if getpass.getpass("The same password again: ") != first:
            raise RefusedError("the two passwords differ; nothing changed")
        password = first
    else:
        line = stdin.readline()
        if not line:
            raise RefusedError("no password on stdin (give it as one line)")
        password = line.removesuffix("\n").removesuffix("\r")
    try:
        check_password(password)
    except ChatError as e:
        raise RefusedError(e.message) from None
    return password


# -- commands ---------------------------------------------------------------

def _user(store: AdminStore, ref: str) -> Account:
    account = store.find(ref)
    if account is None:
        what = f"id {ref}" if ref.isascii() and ref.isdigit() else repr(ref)
        raise RefusedError(f"no such user: {what}")
    return account


def cmd_list(store: AdminStore, args: argparse.Namespace) -> int:
    page = store.accounts(args.limit + 1, after=args.after or 0, offset=args.offset or 0)
    more = len(page) > args.limit
    page = page[: args.limit]
    next_after = page[-1].id if more and page else None
    if args.json:
        print(json.dumps({"accounts": [_account_json(a) for a in page],
                          "next_after": next_after}, ensure_ascii=False))
        return OK
    head = ("ID", "NAME", "CREATED (UTC)", "LAST LOGIN (UTC)", "ADMIN", "DISABLED")
    rows = [(str(a.id), _printable(a.name), _when(a.created_at), _when(a.last_login),
             "yes" if a.is_admin else "no",
             (_when(a.disabled_at) if a.disabled_at else "yes") if a.disabled else "no")
            for a in page]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if next_after is not None:
        print(f"more: qqchat-admin list --after {next_after}", file=sys.stderr)
    return OK


def cmd_create(store: AdminStore, args: argparse.Namespace) -> int:
    name: str = args.name
    try:
        check_user_name(name)
    except ChatError as e:
        raise RefusedError(f"bad name {name!r}: {e.message}") from None
    taken = store.find(name)  # before asking for a password that would be wasted
    if taken is not None:
        raise RefusedError(f"name taken: {name!r} (by {taken.label()})")
    password = read_password(name, sys.stdin)
    uid = store.create(name, hash_password(password, args.hash_cost), _now(), args.admin)
    if uid is None:
        raise RefusedError(f"name taken: {name!r}")
    print(f"Created {name} with id {uid}{' (admin)' if args.admin else ''}.")
    return OK


def cmd_disable(store: AdminStore, args: argparse.Namespace) -> int:
    a = _user(store, args.user)
    store.set_disabled(a.id, True, _now())
    print(f"{a.label()} was already disabled." if a.disabled else
          f"Disabled {a.label()}: it cannot log in, and its session ends within seconds.")
    return OK


def cmd_enable(store: AdminStore, args: argparse.Namespace) -> int:
    a = _user(store, args.user)
    store.set_disabled(a.id, False, _now())
    print(f"Enabled {a.label()}." if a.disabled else f"{a.label()} was not disabled.")
    return OK


def cmd_reset_password(store: AdminStore, args: argparse.Namespace) -> int:
    a = _user(store, args.user)
    password = read_password(a.name, sys.stdin)
    revoked = store.set_password(a.id, hash_password(password, args.hash_cost))
    print(f"Password of {a.label()} reset; {revoked} session token"
          f"{'' if revoked == 1 else 's'} revoked.")
    return OK


def _set_admin(admin: bool) -> Callable[[AdminStore, argparse.Namespace], int]:
    def cmd(store: AdminStore, args: argparse.Namespace) -> int:
        a = _user(store, args.user)
        store.set_admin(a.id, admin)
        if a.is_admin == admin:
            print(f"{a.label()} {'was already' if admin else 'was not'} an admin.")
        else:
            print(f"{a.label()} is {'now' if admin else 'no longer'} an admin "
                  "(from its next login).")
        return OK

    return cmd


def _migration_lines(state: SchemaStatus) -> list[str]:
    return [f"  {a.label}  applied {_when(a.applied_at)} UTC" if a.applied_at else
            f"  {a.label}" for a in state.history]


def cmd_migrate(args: argparse.Namespace) -> int:
    """Runs on a connection of its own (storage/migrations.py), not on an AdminStore:
    a long migration must not meet the admin connection's read timeout."""
    db = args.config.describe()
    if args.status:
        state = status(args.config, apply=False)
        known = latest(args.config.dialect)
        print(f"{db}: schema version {state.version} ({state.latest}); this qqchat "
              f"knows up to {known.label}.")
        for line in _migration_lines(state):
            print(line)
        if state.version > known.version:
            raise RefusedError("the database is newer than this qqchat, which will not "
                               "use it: run the version that upgraded it, or a later one")
        if state.pending:
            print("To apply (qqchat-admin migrate, or a daemon's start): "
                  + ", ".join(m.label for m in state.pending))
        return OK
    state = status(args.config, apply=True)
    if state.applied_now:
        print(f"Applied {', '.join(m.label for m in state.applied_now)} to {db}.")
    print(f"Schema up to date in {db}: version {state.version} ({state.latest}).")
    return OK


# -- the command line -------------------------------------------------------

def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"cannot be negative: {text}")
    return value


def _limit(text: str) -> int:
    value = _positive(text)
    if not 1 <= value <= LIST_MAX:
        raise argparse.ArgumentTypeError(f"between 1 and {LIST_MAX}")
    return value


def _cost(text: str) -> int:
    value = _positive(text)
    if not MIN_COST <= value <= MAX_COST:
        raise argparse.ArgumentTypeError(f"between {MIN_COST} and {MAX_COST}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qqchat-admin", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Manage qqchat accounts in the daemons' database; no daemon needs to run.")
    parser.add_argument("--db", default=os.environ.get("QQCHAT_DB") or DEFAULT_DB,
                        help="database URL, as the daemon's: sqlite:///PATH or "
                             "mysql://USER:PASS@HOST:PORT/DB (env QQCHAT_DB; "
                             f"default {DEFAULT_DB})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list accounts, in id order, a page at a time")
    p.add_argument("--limit", type=_limit, default=LIST_DEFAULT,
                   help=f"accounts per page (default {LIST_DEFAULT})")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--after", type=_positive, metavar="ID",
                       help="start after this id (the next page of the previous one)")
    where.add_argument("--offset", type=_positive, help="skip this many accounts first")
    p.add_argument("--json", action="store_true",
                   help='one JSON object: {"accounts": [...], "next_after": ID or null}')
    p.set_defaults(run=cmd_list)

    cost_default = os.environ.get("QQCHAT_HASH_COST") or str(DEFAULT_COST)
    p = sub.add_parser("create", help="create an account (password from a prompt or stdin)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--admin", action="store_true", help="make it an admin too")
    p.add_argument("--hash-cost", type=_cost, default=cost_default,
                   help=f"scrypt cost, log2 N (env QQCHAT_HASH_COST; default {DEFAULT_COST})")
    p.set_defaults(run=cmd_create)

    p = sub.add_parser("reset-password",
                       help="set a new password (prompt or stdin); revokes its session tokens")
    p.add_argument("user", metavar="NAME|ID")
    p.add_argument("--hash-cost", type=_cost, default=cost_default,
                   help=f"scrypt cost, log2 N (env QQCHAT_HASH_COST; default {DEFAULT_COST})")
    p.set_defaults(run=cmd_reset_password)

    for name, run, text in [
            ("disable", cmd_disable, "refuse its logins and end its live session"),
            ("enable", cmd_enable, "let a disabled account log in again"),
            ("grant-admin", _set_admin(True), "make an account an admin (may broadcast)"),
            ("revoke-admin", _set_admin(False), "take admin away from an account")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("user", metavar="NAME|ID")
        p.set_defaults(run=run)

    p = sub.add_parser("migrate", help="apply the schema migrations this database lacks, in "
                                       "order (creates an SQLite file), then exit")
    p.add_argument("--status", action="store_true",
                   help="only show the recorded version and what would be applied")
    p.set_defaults(run=None)
    return parser


def fail(code: int, message: str) -> NoReturn:
    print(f"qqchat-admin: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.config = parse_database_url(args.db)
    except ValueError as e:  # DatabaseURLError, or a bad pool size
        parser.error(f"--db: {e}")
    if args.command == "migrate":
        try:
            return cmd_migrate(args)
        except (MigrationError, DatabaseURLError) as e:  # the latter: no MySQL driver
            fail(UNREACHABLE, str(e))
        except (StartupError, RefusedError) as e:  # a newer database; the lock held
            fail(REFUSED, str(e))
        except KeyboardInterrupt:
            fail(REFUSED, "interrupted; a migration cut short is resumed by the next run")
    try:
        store = open_store(args.config)
    except (DatabaseUnavailableError, DatabaseURLError) as e:  # the latter: no MySQL driver
        fail(UNREACHABLE, str(e))
    except StartupError as e:  # a newer database; the lock held too long
        fail(REFUSED, str(e))
    try:
        return int(args.run(store, args))
    except RefusedError as e:
        fail(REFUSED, str(e))
    except store.unavailable_errors as e:
        fail(UNREACHABLE, f"database {args.config.describe()} unavailable: {e}")
    except (KeyboardInterrupt, EOFError):
        fail(REFUSED, "interrupted; nothing changed")
    finally:
        with contextlib.suppress(Exception):  # already gone with the server
            store.close()


if __name__ == "__main__":
    sys.exit(main())
