"""The embedded sqlite MLflow store: safe first start under concurrency, a clear message and a repair command.

MLflow creates a new sqlite store by running its alembic migrations on first connect. Several processes doing
that at once (three runs started together on a fresh folder) raced on `_alembic_tmp_*` tables and could leave a
half-migrated `mlflow.db` that every later run died on. Here the first connection and the experiment lookup /
creation happen under an exclusive file lock (`<dir>/.lock`, fcntl), so concurrent first starts queue for a
moment and all succeed; a store found half-migrated (a leftover `_alembic_tmp_*` table, or a migration error)
is one `StoreError` line naming `edit-rlhf repair-store DIR`, which backs the database up and finishes it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from typing import Iterator, List, Optional

SQLITE = "sqlite:///"


class StoreError(RuntimeError):
    pass


def sqlite_path(uri: str) -> Optional[str]:
    return uri[len(SQLITE):] if uri and uri.startswith(SQLITE) else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Exclusive lock on the store's folder for the span of the block (no-op for a server URI)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    import fcntl

    d = os.path.dirname(os.path.abspath(db)) or "."
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, ".lock"), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def leftover_tables(db: str) -> List[str]:
    """Tables a migration leaves behind when it dies half-way (`_alembic_tmp_<table>`)."""
    if not os.path.exists(db) or os.path.getsize(db) == 0:
        return []
    con = sqlite3.connect(db, timeout=30)
    try:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '\\_alembic\\_tmp\\_%' "
                           "ESCAPE '\\'").fetchall()
    finally:
        con.close()
    return sorted(r[0] for r in rows)


def repair_hint(db: str) -> str:
    return f"edit-rlhf repair-store {os.path.dirname(os.path.abspath(db))}"


def check(uri: str) -> None:
    """Raise StoreError when the sqlite store at `uri` is visibly half-migrated."""
    db = sqlite_path(uri)
    if db is None:
        return
    left = leftover_tables(db)
    if left:
        raise StoreError(f"MLflow store {db} is half-migrated (leftover {', '.join(left)} from an interrupted "
                         f"migration); repair it with: {repair_hint(db)}")


def translate(uri: str, e: Exception) -> Exception:
    """A store error as one line with the repair command (sqlite); other errors unchanged."""
    db = sqlite_path(uri)
    if db is None:
        return e
    text = f"{type(e).__module__}.{type(e).__name__}: {e}".lower()
    if any(s in text for s in ("alembic", "sqlalchemy", "sqlite", "migrat", "no such table", "already exists",
                               "database")):
        first = " ".join(str(e).split())[:300]
        return StoreError(f"MLflow store {db} cannot be opened ({type(e).__name__}: {first}); it may be "
                          f"half-migrated: repair it with: {repair_hint(db)}")
    return e


def repair(directory: str) -> dict:
    """`edit-rlhf repair-store DIR`: back up DIR/mlflow.db, drop leftover migration tables, run MLflow's
    migrations to the end, and check that the store opens. Returns what it did."""
    db = os.path.join(os.path.abspath(directory), "mlflow.db")
    if not os.path.exists(db):
        raise StoreError(f"no MLflow store at {db}")
    uri = SQLITE + db
    with store_lock(uri):
        backup = f"{db}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.copy2(db, backup)
        dropped = leftover_tables(db)
        con = sqlite3.connect(db, timeout=30)
        try:
            for t in dropped:
                con.execute(f'DROP TABLE "{t}"')
            con.commit()
        finally:
            con.close()
        from mlflow.store.db.utils import _upgrade_db, create_sqlalchemy_engine_with_retry

        engine = create_sqlalchemy_engine_with_retry(uri)
        try:
            _upgrade_db(engine)
        finally:
            engine.dispose()
        from mlflow.tracking import MlflowClient

        n = len(MlflowClient(uri).search_experiments())
    return {"store": db, "backup": backup, "dropped_tables": dropped, "experiments": n}
