"""Stopping cleanly when the cluster asks: SIGTERM and SIGINT end a run at a step boundary, with a checkpoint.

Schedulers send SIGTERM some seconds before they kill a job (SLURM before preemption or at the time limit,
Kubernetes when it evicts a pod), and Ctrl-C sends SIGINT. While :class:`StopSignals` is active, either signal
only records that a stop was asked for; the training loop looks at the record after every step, all processes
agree on it (one ``all_reduce`` of the signal number per step, so every process stops after the same step and
the checkpoint's collectives match), writes a checkpoint and raises :class:`TrainingStopped`. ``cmkit train``
turns that into a one-line message and exit status 0; ``--resume`` then continues bit for bit.

Repeated signals are not escalated: torchrun forwards a signal it receives to its workers, which may have had
it already (a terminal sends Ctrl-C to the whole process group, ``srun`` signals every task), and a second
signal must not abort the checkpoint. SIGKILL still ends a process at once; checkpoints are written atomically.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional, Union

#: the signals that stop a run at the next step boundary.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)

_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]


class TrainingStopped(Exception):
    """The run stopped early on a signal, after writing the checkpoint of ``step``; ``--resume`` continues it."""

    def __init__(self, signal_number: int, step: int, checkpoint: Path, output_dir: Path) -> None:
        self.signal_name = signal_name(signal_number)
        self.step = step
        self.checkpoint = checkpoint
        super().__init__(
            f"stopped by {self.signal_name} after step {step}; checkpoint saved to {checkpoint}; continue with "
            f"cmkit train --output {output_dir} --resume"
        )


def signal_name(number: int) -> str:
    """``SIGTERM`` for 15 and so on (``signal 42`` for numbers without a name)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class StopSignals:
    """While installed (``with StopSignals() as stop:``), SIGTERM and SIGINT set :attr:`received` instead of ending the process.

    Handlers are installed only from the main thread (Python delivers signals there; elsewhere the context does
    nothing), never over a signal that is ignored (``SIG_IGN``, e.g. SIGINT of a background job) or handled
    outside Python, and the previous handlers come back on exit.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        #: the number of the first stop signal received (0: none).
        self.received = 0
        self._previous: dict[signal.Signals, _Handler] = {}

    def _record(self, number: int, frame: Optional[FrameType]) -> None:
        if not self.received:
            self.received = number

    def install(self) -> None:
        """Handle the stop signals from now on (until :meth:`restore`)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            previous = signal.getsignal(sig)
            if previous is None or previous == signal.SIG_IGN or sig in self._previous:
                continue
            self._previous[sig] = previous
            signal.signal(sig, self._record)
            # the handler only records, so let interrupted system calls restart: a signal delivered to one of the
            # native threads (gloo, OpenMP) must not fail its read with EINTR (seen as an abort in a torchrun worker)
            if hasattr(signal, "siginterrupt"):
                signal.siginterrupt(sig, False)

    def restore(self) -> None:
        """Put the previous handlers back (a no-op when nothing was installed)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> "StopSignals":
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    @property
    def active(self) -> tuple[signal.Signals, ...]:
        """The signals this context handles right now."""
        return tuple(self._previous)

