"""Preemption-safe stopping: signals only set flags; the loop acts at the next step boundary.

Why: submitit's own USR2 handler calls checkpoint() and exits inside the signal handler, which
can land in the middle of an optimiser step. We register after submitit, save a consistent state
at the next step boundary (all ranks agree through an all-reduce), then hand the signal back to
submitit, which requeues the job. SIGTERM (sent first on SLURM preemption) asks for a save only
when submitit is in charge (USR2 follows); without submitit it also stops the run.
"""

from __future__ import annotations

import signal
import threading


class Preempted(SystemExit):
    """Raised after the state was saved, when no submitit handler takes over (inprocess runs)."""


class StopFlags:
    def __init__(self) -> None:
        self.save = False
        self.stop = False
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopFlags:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGUSR2, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        return self

    def _has_submitit_handler(self, sig: int) -> bool:
        previous = self._previous.get(sig)
        return callable(previous) and "submitit" in getattr(previous, "__module__", "")

    def _on_signal(self, signum: int, frame) -> None:
        print(f"[signal] received {signal.Signals(signum).name}: saving at the next step boundary", flush=True)
        self.save = True
        self.signum = signum
        if signum == signal.SIGUSR2 or not self._has_submitit_handler(signal.SIGUSR2):
            self.stop = True

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def hand_over(self, saved_at: str) -> None:
        """After the save: let submitit requeue (it exits the process), else exit ourselves."""
        signum = self.signum or signal.SIGUSR2
        previous = self._previous.get(signal.SIGUSR2)
        self.uninstall()
        if callable(previous) and "submitit" in getattr(previous, "__module__", ""):
            previous(signal.SIGUSR2, None)  # submitit: checkpoint() -> requeue -> sys.exit
        raise Preempted(f"stopped by {signal.Signals(signum).name}; state saved at {saved_at}. "
                        f"Run the same command again (or snakemake) to resume from it.")
