"""A cross-process lock on a file (``fcntl.flock``): what processes sharing a SQLite file take while one of
them creates its tables (MLflow's store, Optuna's study), and jobs while one builds the decode cache."""
from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

log = logging.getLogger(__name__)


@contextmanager
def file_lock(path: str | Path, waiting: Optional[str] = None) -> Iterator[None]:
    """Held for the block; ``waiting``: a line logged (once) when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (fcntl.LOCK_NB if waiting else 0))
        except BlockingIOError:
            log.info("%s", waiting)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI; None for other URIs."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Held while a SQLite store is opened (its schema created or migrated); no-op for servers."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    with file_lock(f"{db}.lock"):
        yield
