"""SQL schema files, one per dialect, installed as the ``qqchat.db`` package.

The files are plain SQL so an operator can read or apply them by hand; every
statement is idempotent because the daemon applies the file at each start.
"""

from importlib.resources import files


def schema_statements(dialect: str) -> list[str]:
    """Return the schema for ``dialect`` ("sqlite" or "mysql") split into statements."""
    text = (files(__name__) / f"{dialect}.sql").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]
