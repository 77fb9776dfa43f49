"""SQL schema files, installed as the ``qqchat.db`` package.

``<dialect>.sql`` is the baseline, migration 1: the whole schema as it stood when
versions began to be recorded. Every change since is a numbered file,
``<dialect>/NNNN_name.sql``, applied once, in order, by ``qqchat.storage.schema``,
which records each number in the database. The files are plain SQL so an operator
can read them; each statement is written to be run again safely (``IF NOT EXISTS``,
``IF EXISTS``), because MariaDB commits each DDL statement on its own and a
migration cut short is run again whole.
"""

from __future__ import annotations

import re
from importlib.resources import files

DIALECTS = ("sqlite", "mysql")
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def split_statements(text: str) -> list[str]:
    """Statements of an SQL file: ``--`` comment lines dropped, split at ``;``."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


def schema_statements(dialect: str) -> list[str]:
    """The baseline schema (migration 1) for ``dialect`` ("sqlite" or "mysql")."""
    return split_statements((files(__name__) / f"{dialect}.sql").read_text(encoding="utf-8"))


def migration_files(dialect: str) -> list[tuple[int, str, list[str]]]:
    """(number, name, statements) of every ``<dialect>/NNNN_name.sql``, in order."""
    found: dict[int, tuple[int, str, list[str]]] = {}
    for entry in (files(__name__) / dialect).iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match is None:
            continue
        number = int(match.group(1))
        if number in found:
            raise ValueError(f"two migrations numbered {number} in db/{dialect}/")
        found[number] = (number, match.group(2),
                         split_statements(entry.read_text(encoding="utf-8")))
    return [found[n] for n in sorted(found)]
