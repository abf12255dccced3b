"""A lock that serializes claiming trials across processes and machines sharing one study, so workers
together start exactly ``n_trials``: a file lock beside a SQLite file or a journal file, an advisory lock in
PostgreSQL."""
from __future__ import annotations

import logging
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from imgexp.locks import file_lock
from imgexp.tracking.study_storage import journal_path

log = logging.getLogger(__name__)


class StudyLock:
    def __init__(self, url: str, study_name: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        self.key = zlib.crc32(study_name.encode())
        if journal_path(url) is not None:
            self.backend, self.path = "journal", Path(f"{journal_path(url)}.claims.lock")  # (<file>.lock: the
            # journal backend's own lock)
            return
        parsed = make_url(url)
        self.backend = parsed.get_backend_name()
        if self.backend == "sqlite":
            self.path = Path(f"{parsed.database}.lock")
        elif self.backend == "postgresql":
            self.engine = create_engine(url, poolclass=NullPool)
        else:
            log.warning("no cross-process lock for %s storage: concurrent workers may start a few trials more "
                        "than n_trials", self.backend)

    @contextmanager
    def held(self) -> Iterator[None]:
        if self.backend in ("sqlite", "journal"):
            with file_lock(self.path):
                yield
        elif self.backend == "postgresql":
            from sqlalchemy import text

            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        else:
            yield
