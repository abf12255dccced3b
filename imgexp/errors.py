"""One-line error messages, the way imgexp reports every failure on the command line and in MLflow."""
from __future__ import annotations

import dataclasses
import difflib
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from imgexp.redact import mask


def describe(err: BaseException) -> str:
    """First line of the error plus, for config errors, the first line of their OmegaConf cause."""
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    parts = [lines[0] if lines else type(err).__name__]
    if len(lines) > 1 and lines[0].endswith(":"):  # "ConfigKeyError raised while composing config:" and its cause
        parts.append(lines[1])
    cause = getattr(err.__cause__, "msg", None)
    if cause:
        parts.append(str(cause).strip().splitlines()[0])
    parts += suggestions(err)
    return mask(" ".join(parts))  # printed, logged and stored in MLflow: no URI password


def closest(word: str, known: list[str]) -> list[str]:
    """The known words closest to a mistyped one, closest first (at most 3)."""
    return difflib.get_close_matches(word, known, n=3, cutoff=0.6)


def suggestions(err: BaseException) -> list[str]:
    """For a key the config has not (``epoch=3``: "did you mean epochs?") or an option its group has not
    (``model=resnet181``: the closest options first, then every one)."""
    options = getattr(err, "options", None)  # Hydra's MissingConfigException lists a group's options
    if options:
        near = closest(str(getattr(err, "missing_cfg_file", "")).rsplit("/", 1)[-1], list(options))
        return ([f"(did you mean {' or '.join(near)}?)"] if near else []) + [f"(available: {', '.join(options)})"]
    cause, keys = err.__cause__, []
    schema = getattr(cause, "object_type", None)
    if dataclasses.is_dataclass(schema) and getattr(cause, "key", None) is not None:
        keys = closest(str(cause.key), [f.name for f in dataclasses.fields(schema)])
    return [f"(did you mean {' or '.join(keys)}?)"] if keys else []


def one_line(err: BaseException) -> str:
    """The line printed on stderr before a non-zero exit."""
    return "imgexp: error: " + describe(err)


FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"  # as the user set it (run_app sets it for Hydra)


@contextmanager
def one_line_exit() -> Iterator[None]:
    """Inside a Hydra app: an error ends it with one line (``HYDRA_FULL_ERROR=1``: the traceback), before
    Hydra logs it with its own."""
    try:
        yield
    except Exception as err:
        if FULL_ERROR:
            raise
        raise SystemExit(one_line(err)) from err


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP outside training (while loading data, drawing plots): the run ends KILLED, exit
    128 + the signal (143, 129)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


def raise_terminated(signum: int, frame) -> None:
    raise Terminated(signum)


@contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """While a run that is ending anyway is being closed, a further SIGTERM, SIGHUP or Ctrl-C (a launcher
    stopping its ranks, ``docker stop`` after a failure) is ignored rather than cut the closing short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_app(app: Callable[[], object]) -> None:
    """Run a Hydra app so that any error is one line on stderr and exit 1 (``HYDRA_FULL_ERROR=1``: the
    traceback), and an interruption one line and exit 128 + signal (130 for Ctrl-C). Hydra is told to
    raise composition errors to us instead of printing them."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed (unless nohup ignores
            if signal.getsignal(signum) != signal.SIG_IGN:  # it); the trainer handles both gracefully
                signal.signal(signum, raise_terminated)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        app()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except Exception as err:  # noqa: BLE001 - every error becomes one line and a non-zero exit
        print(one_line(err), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as err:  # Ctrl-C, or a stop signal the trainer turned into a saved state
        print("imgexp: " + (describe(err) if str(err) else "interrupted"), file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 130))
