"""Signals that ask a training run to stop cleanly: SIGTERM (``docker stop``, Kubernetes, SLURM at its
limit), SIGHUP (the terminal that started it closed), SIGUSR1 / SIGUSR2 (what SLURM sends ahead of a time limit or preemption with ``--signal``; SIGUSR2
is submitit's) and Ctrl-C. The trainer finishes its step, saves ``last.pt`` and raises
:class:`~imgexp.train.trainer.TrainingInterrupted`; a second Ctrl-C stops at once. A Python handler the
process had for SIGUSR1/SIGUSR2 (submitit's, which requeues a SLURM job) is attached to the exception as
``chain``, for the app to call once the run is closed."""
from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from imgexp.train.stopping import TrainingInterrupted
from imgexp.train.trainer import Trainer

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


@contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """While inside, the stop signals ask ``trainer`` to stop after its current step (main thread only:
    elsewhere Python cannot handle signals, and the process's own handlers stay)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame) -> None:
        if signum == signal.SIGINT and trainer.stop_signal is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        log.warning("%s received: stopping after this step", signal.Signals(signum).name)
        trainer.request_stop(signum)

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS
                if signal.getsignal(s) != signal.SIG_IGN}  # nohup's ignored SIGHUP stays ignored
    try:
        yield
    except TrainingInterrupted as err:
        handler = previous[err.signum]  # on SLURM's warning signals: submitit's, which requeues the job
        if err.signum in (signal.SIGUSR1, signal.SIGUSR2) and callable(handler):
            err.chain = handler
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
