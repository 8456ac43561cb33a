"""Where the GCS's tables live, so a restarted GCS finds the cluster again.

    MemoryStorage   a local ``init()`` cluster: state dies with the GCS process
    SqliteStorage   ``luminary start --head`` (default: <session>/gcs.sqlite): WAL, one transaction
                    per logical change, an exclusive lock file next to it
    RedisStorage    ``--storage redis://host:port/db``: one hash per table, a lock key with a TTL

Every backend is a set of tables of ``bytes -> bytes``; reads come from an in-memory mirror
loaded at open, writes go through to the backend before the call returns (so a reply sent after
a write is sent after the write is durable against the GCS process dying).  ``write(ops)`` makes
several rows one transaction.  Rows of structured tables are msgpack (``pack``/``unpack``).

Tables: meta (job counter), nodes, actors, names (namespace\\0name -> actor id), pgs, kv,
checkpoints.
"""
from __future__ import annotations

import fcntl
import os
import sqlite3

import msgpack

SCHEMA_VERSION = 1
LOCK_TTL_S = 10        # Redis: a lock not refreshed for this long is free (its GCS is gone)


class StorageError(RuntimeError):
    """The GCS storage cannot be used; the message names it and says what to do."""


def pack(row) -> bytes:
    return msgpack.packb(row, use_bin_type=True)


def unpack(blob):
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


class MemoryStorage:
    persistent = False
    description = "memory"

    def __init__(self):
        self.tables: dict[str, dict[bytes, bytes]] = {}

    def put(self, table, key, value):
        self.write([(table, key, value)])

    def get(self, table, key):
        return self.tables.get(table, {}).get(key)

    def delete(self, table, key):
        present = key in self.tables.get(table, {})
        if present:
            self.write([(table, key, None)])
        return present

    def keys(self, table, prefix=b""):
        return [k for k in self.tables.get(table, {}) if k.startswith(prefix)]

    def items(self, table):
        return dict(self.tables.get(table, {}))

    def write(self, ops):
        """Apply [(table, key, value or None to delete)] as one transaction."""
        self._commit(ops)
        for table, key, value in ops:
            t = self.tables.setdefault(table, {})
            if value is None:
                t.pop(key, None)
            else:
                t[key] = value

    def _commit(self, ops):
        pass

    def refresh_lock(self):
        pass

    def close(self):
        pass


class SqliteStorage(MemoryStorage):
    """Write-through SQLite (WAL); reads come from memory.  ``synchronous=NORMAL``: a committed
    change survives the GCS process dying (SIGKILL, crash); the last few may be lost if the head
    machine itself loses power."""
    persistent = True

    def __init__(self, path):
        super().__init__()
        self.path = path = os.path.abspath(path)
        self.description = f"sqlite:{path}"
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise StorageError(f"Cannot open the GCS storage {path}: the directory {parent} does not exist. "
                               "Create it or pass another --storage path.")
        self._lock_fd = _take_file_lock(path + ".lock", path)
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._check()
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS luminary_meta (k TEXT PRIMARY KEY, v TEXT)")
            self.db.execute("CREATE TABLE IF NOT EXISTS rows (tbl TEXT, k BLOB, v BLOB, PRIMARY KEY (tbl, k))")
            self.db.execute("INSERT OR IGNORE INTO luminary_meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            for tbl, k, v in self.db.execute("SELECT tbl, k, v FROM rows"):
                self.tables.setdefault(tbl, {})[bytes(k)] = bytes(v)
        except sqlite3.DatabaseError as e:
            self.close()
            raise StorageError(f"The GCS storage {path} is corrupted or is not an SQLite file ({e}). It was left "
                               "untouched: move it away to start with empty cluster state, or restore a copy.") from None
        except BaseException:
            self.close()
            raise

    def _check(self):
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "luminary_meta" not in tables:
            raise StorageError(f"{self.path} is an SQLite file but not a Luminary GCS store (tables: "
                               f"{', '.join(sorted(tables))}). Pass a new path with --storage.")
        if tables:
            ok = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            row = self.db.execute("SELECT v FROM luminary_meta WHERE k='schema'").fetchone()
            if row is None or row[0] != str(SCHEMA_VERSION):
                raise StorageError(f"The GCS storage {self.path} was written by an incompatible Luminary version "
                                   f"(schema {row[0] if row else 'unknown'}; this version reads schema "
                                   f"{SCHEMA_VERSION}). Use a new --storage path, or the Luminary that wrote it.")

    def _commit(self, ops):
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for table, key, value in ops:
                if value is None:
                    db.execute("DELETE FROM rows WHERE tbl=? AND k=?", (table, key))
                else:
                    db.execute("INSERT OR REPLACE INTO rows VALUES (?, ?, ?)", (table, key, value))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self):
        db = getattr(self, "db", None)
        if db is not None:
            db.close()
            self.db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _take_file_lock(lock_path, path):
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise StorageError(f"Cannot open the GCS storage lock {lock_path}: {e}.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StorageError(f"Another GCS (pid {holder}) is using the storage {path}. Two GCSs on one storage "
                           "would overwrite each other's state: stop that cluster first, or pass another "
                           "--storage path.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


class RedisStorage(MemoryStorage):
    """Tables as Redis hashes under ``<prefix>t:<table>``; a transaction (MULTI/EXEC) per change.
    Durability is the server's (``appendonly yes`` to survive a Redis restart).  The lock key holds
    ``lock_token`` for LOCK_TTL_S and is refreshed by the GCS; the head node passes the same token
    to the GCS it restarts, which may take the lock over at once."""
    persistent = True

    def __init__(self, url, lock_token: str, prefix="luminary:"):
        super().__init__()
        self.url = url
        self.description = url
        try:
            import redis
        except ImportError:
            raise StorageError(f"The GCS storage {url} needs the redis package: pip install 'luminary[redis]'.") \
                from None
        self.prefix = prefix
        self.token = lock_token
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            self.client.ping()
            self._lock()
            schema = self.client.get(prefix + "schema")
            if schema is None:
                self.client.set(prefix + "schema", str(SCHEMA_VERSION))
            elif schema.decode() != str(SCHEMA_VERSION):
                self._unlock()
                raise StorageError(f"The GCS storage {url} was written by an incompatible Luminary version (schema "
                                   f"{schema.decode()}; this version reads schema {SCHEMA_VERSION}). Use another "
                                   "database, or the Luminary that wrote it.")
            for key in self.client.scan_iter(match=prefix + "t:*"):
                table = key.decode()[len(prefix) + 2:]
                self.tables[table] = {bytes(k): bytes(v) for k, v in self.client.hgetall(key).items()}
        except redis.RedisError as e:
            raise StorageError(f"Cannot use the GCS storage {url}: {type(e).__name__}: {e}. Check that the Redis "
                               "server runs there and the address is right.") from None

    def _lock(self):
        key = self.prefix + "lock"
        if self.client.set(key, self.token, nx=True, ex=LOCK_TTL_S):
            return
        holder = self.client.get(key)
        if holder is not None and holder.decode() == self.token:   # our own head restarted its GCS
            self.client.set(key, self.token, ex=LOCK_TTL_S)
            return
        raise StorageError(f"Another GCS holds the lock of the storage {self.url} ({holder.decode() if holder else '?'}). "
                           "Two GCSs on one storage would overwrite each other's state: stop that cluster "
                           f"first, or use another database. A GCS that died frees it within {LOCK_TTL_S}s.")

    _REFRESH = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                "return redis.call('expire', KEYS[1], ARGV[2]) else return 0 end")

    def refresh_lock(self):
        if not self.client.eval(self._REFRESH, 1, self.prefix + "lock", self.token, LOCK_TTL_S):
            raise StorageError(f"The GCS lost the lock of the storage {self.url}: another GCS took it.")

    def _unlock(self):
        self.client.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
                         "else return 0 end", 1, self.prefix + "lock", self.token)

    def _commit(self, ops):
        pipe = self.client.pipeline(transaction=True)
        for table, key, value in ops:
            name = self.prefix + "t:" + table
            if value is None:
                pipe.hdel(name, key)
            else:
                pipe.hset(name, key, value)
        pipe.execute()

    def close(self):
        try:
            self._unlock()
            self.client.close()
        except Exception:   # noqa: BLE001 - closing on the way out
            pass


def parse_spec(spec: str | None):
    """``None``/``memory`` | ``redis://...`` | ``sqlite:PATH`` | ``PATH`` -> (kind, where)."""
    if not spec or spec == "memory":
        return "memory", None
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return "redis", spec
    if spec.startswith("sqlite:"):
        spec = spec[len("sqlite:"):]
        if spec.startswith("//"):
            spec = spec[2:]
    if not spec:
        raise StorageError("Empty GCS storage path: pass --storage PATH, sqlite:PATH or redis://HOST:PORT/DB.")
    return "sqlite", spec


def open_storage(spec: str | None, lock_token: str = ""):
    kind, where = parse_spec(spec)
    if kind == "memory":
        return MemoryStorage()
    if kind == "redis":
        return RedisStorage(where, lock_token or os.urandom(8).hex())
    return SqliteStorage(where)


def redis_from_env(value: str) -> str:
    """Ray's ``RAY_REDIS_ADDRESS`` spelling (``host:port``) as a storage URL."""
    value = value.strip()
    if "://" in value:
        return value
    return f"redis://{value}/0"
