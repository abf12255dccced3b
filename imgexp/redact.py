"""Passwords in URIs never leave the process: :func:`mask` turns ``postgresql://user:secret@host/db`` into
``postgresql://user:***@host/db`` wherever a URI sits in a string (a config value, an override, a log
line, a YAML file), and :class:`RedactFilter` does it to every log record. The real URI is still what
connects; only what is shown, logged to MLflow or written to a file is masked.

The safer way is no password in a URI at all: libpq's ``PGPASSWORD`` or ``~/.pgpass`` for PostgreSQL,
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` for an authenticated MLflow server.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

# scheme://user:PASSWORD@host... for any scheme (postgresql+psycopg, mysql, https, ...). The password runs
# to the @ after which the host part holds no other @ (a raw @ or / in a password is masked with it), and
# never crosses whitespace or a quote, so URIs inside longer text, overrides and quoted values are found;
# also as Hydra escapes them in overrides it writes and logs (postgresql\://user\:secret@host/db).
_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*\\?://[^\s:/@'\"]*:)"  # scheme://user:
    r"(?P<password>[^\s'\"]+?)"  # the password
    r"(?=@[^\s'\"@/?#]*(?:[/?#\s'\"]|$))"  # @host, then the path, the end of the word or of the text
)
MASK = "***"


def mask(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***``; anything else unchanged."""
    return _PASSWORD.sub(lambda m: m["head"] + MASK, text) if "://" in text else text


def mask_container(obj):
    """A copy of nested dicts / lists / tuples with :func:`mask` applied to every string in them (a config
    saved in a checkpoint)."""
    if isinstance(obj, str):
        return mask(obj)
    if isinstance(obj, dict):
        return {k: mask_container(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(mask_container(v) for v in obj)
    return obj


def mask_files(folder: str | os.PathLike) -> None:
    """Rewrite with :func:`mask` the YAML files in ``folder`` that hold a URI password (Hydra's ``.hydra/``
    config.yaml, hydra.yaml and overrides.yaml, written before the task function runs)."""
    for path in sorted(Path(folder).glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        if mask(text) != text:
            path.write_text(mask(text), encoding="utf-8")


def save_yaml(config, path: str | os.PathLike) -> None:
    """``OmegaConf.save(config, path)`` with URI passwords masked (a sweep's ``multirun.yaml``)."""
    from omegaconf import OmegaConf

    Path(path).write_text(mask(OmegaConf.to_yaml(config)), encoding="utf-8")


class RedactFilter(logging.Filter):
    """Masks URI passwords in a log record's message and traceback (see :func:`mask`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: the handler reports it as usual
        return record
    masked = mask(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = mask(record.stack_info)
    return record


def _masking_factory(make):
    def factory(*args, **kwargs):
        return redact_record(make(*args, **kwargs))

    factory.redacts = True
    return factory


def install() -> None:
    """Mask every log record: a :class:`RedactFilter` on each handler of every logger configured now
    (Hydra configures logging for each job: call again after it), and, for handlers added later (MLflow's
    own, made when it is imported), at the records' creation. Idempotent."""
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactFilter) for f in handler.filters):
                handler.addFilter(RedactFilter())
    make = logging.getLogRecordFactory()
    if not getattr(make, "redacts", False):
        logging.setLogRecordFactory(_masking_factory(make))


def install_for_job():
    """In a Hydra app's job: :func:`install`, and mask the ``.hydra/`` files Hydra has just written; returns
    Hydra's config of the job (``HydraConfig.get()``)."""
    from hydra.core.hydra_config import HydraConfig

    install()
    hc = HydraConfig.get()
    if hc.output_subdir is not None:
        mask_files(Path(hc.runtime.output_dir) / hc.output_subdir)
    return hc
