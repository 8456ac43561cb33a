"""Where GCS tables live: in memory (default) or in an embedded SQLite file so a restarted GCS
finds its KV table, jobs and named entries again."""
from __future__ import annotations

import sqlite3


class MemoryStorage:
    def __init__(self):
        self.tables: dict[str, dict[bytes, bytes]] = {}

    def put(self, table, key, value):
        self.tables.setdefault(table, {})[key] = value

    def get(self, table, key):
        return self.tables.get(table, {}).get(key)

    def delete(self, table, key):
        return self.tables.get(table, {}).pop(key, None) is not None

    def keys(self, table, prefix=b""):
        return [k for k in self.tables.get(table, {}) if k.startswith(prefix)]

    def close(self):
        pass


class SqliteStorage(MemoryStorage):
    """Write-through SQLite; reads come from memory."""

    def __init__(self, path):
        super().__init__()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (tbl TEXT, k BLOB, v BLOB, PRIMARY KEY (tbl, k))")
        for tbl, k, v in self.db.execute("SELECT tbl, k, v FROM kv"):
            self.tables.setdefault(tbl, {})[bytes(k)] = bytes(v)

    def put(self, table, key, value):
        super().put(table, key, value)
        self.db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (table, key, value))

    def delete(self, table, key):
        self.db.execute("DELETE FROM kv WHERE tbl=? AND k=?", (table, key))
        return super().delete(table, key)

    def close(self):
        self.db.close()
