"""Defaults every layer shares."""

#: The store a command uses when no --db is given.
DEFAULT_DB = "routescope.duckdb"
