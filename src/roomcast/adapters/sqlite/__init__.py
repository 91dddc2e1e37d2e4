"""The embedded SQLite store (the default): `store` runs `queries` on a worker thread;
`schema` migrates the file."""

from roomcast.adapters.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
