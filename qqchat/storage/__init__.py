"""Storage: the connection pool, every SQL statement, and the group-commit message log."""
