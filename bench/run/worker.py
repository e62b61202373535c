"""Configs and reference solves run in a worker process that the sweep can kill: the time limits.

A thread cannot stop a config stuck in Python or in a long native call (a CUDA kernel, a BLAS call);
only its process can be killed. The worker sets the sweep's execution policy before its first job, keeps
the sweep's cache (models, x_T, reference solves) across jobs, returns each config's row to the parent
(a reference solve it stores in the run folder itself, atomically), and is replaced by a fresh one after
a kill. The parent writes the rows, so a killed worker never leaves a half-written file.

Workers come from a fork server that has imported the harness (and torch) once: starting a worker is
a fork of that clean process, not a fresh interpreter, and no CUDA context is ever forked (the fork
server never touches CUDA; each worker initialises its own).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time

_CONTEXT = None
# Imported once by the fork server, not by each worker: the harness, and what its metrics and stochastic solvers
# import on first use (torch-fidelity's statistics: 1.3 s; torchsde, for the Brownian paths: 0.3-1.8 s), which every
# Ray task's fresh worker would otherwise pay again.
PRELOAD = ["bench.run.runner", "torch_fidelity.metric_fid", "torch_fidelity.metric_prc", "torch_fidelity.metric_kid",
           "torchsde"]


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


def _exit_with(parent_pid: int) -> None:
    """End this worker soon after the sweep's process is gone (killed, say): no orphan computes on."""
    while True:
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        time.sleep(1.0)


def _serve(connection, shared: dict, parent_pid: int, execution_policy) -> None:
    """The worker's loop until told to stop (None) or the parent goes: ("config", cfg, env, run_id) in, its row out;
    ("reference", cfg) in, the reference solve stored in the run folder and its status out; ("ready",) in, True out
    (ConfigWorker.start)."""
    from bench.run.runner import SweepCache, make_reference, run_config

    threading.Thread(target=_exit_with, args=(parent_pid,), daemon=True).start()
    execution_policy.apply()
    cache = SweepCache(**shared)
    while True:
        try:
            job = connection.recv()
        except EOFError:  # the parent closed its end
            return
        if job is None:
            return
        if job[0] == "ready":
            connection.send(True)
        elif job[0] == "reference":
            connection.send(make_reference(job[1], cache))
        else:
            _, cfg, env, run_id = job
            connection.send(run_config(cfg, cache, env, run_id))


@contextlib.contextmanager
def _main_script_hidden():
    """multiprocessing re-runs the parent's main script in each new worker (as __mp_main__) unless it
    is guarded by ``if __name__ == "__main__"``; a user's script that calls run_sweep would then run its
    sweep again in every worker. Workers build everything from names, so they do not need the script:
    its path is hidden while a worker starts."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is not None and getattr(main, "__spec__", None) is None:
        main.__file__ = None
        try:
            yield
        finally:
            main.__file__ = path
    else:
        yield


READY_WITHIN_S = 120.0  # a worker that has not started serving by then never will (a fork and imports: 3-4 s)
EXIT_WITHIN_S = 30.0  # a worker that closed its end of the pipe has this long to exit before it is killed


class ConfigWorker:
    """Runs one job (a config or a reference solve) at a time in a child process, each within its time limit."""

    def __init__(self, execution_policy, **shared):
        """``execution_policy``: set in the child before its first job; ``shared``: the SweepCache fields the
        worker starts with (what later configs will use, the run folder)."""
        self.policy, self.shared = execution_policy, shared
        self.process = self.connection = None

    def _start(self) -> None:
        context = _context()
        self.connection, child = context.Pipe()
        process = context.Process(target=_serve, args=(child, self.shared, os.getpid(), self.policy), daemon=True)
        with _main_script_hidden():
            process.start()
        self.process = process
        child.close()

    def start(self) -> float:
        """Start the child process where none runs, and wait until it serves (its fork, the execution policy, its
        cache): the seconds that took, what a sweep pays before its first config and after each kill."""
        started = time.monotonic()
        outcome, _ = self.run(("ready",), READY_WITHIN_S)
        if outcome != "row":
            raise RuntimeError(f"the worker process did not start within {READY_WITHIN_S:g} s ({outcome})")
        return time.monotonic() - started

    def run(self, job: tuple, time_limit_s: float) -> tuple[str, object]:
        """("row", the job's result) when it finished in time; ("timeout", seconds) when it was stopped;
        ("died", exit code) when the worker died on its own (a crash, the kernel's OOM killer)."""
        if self.process is None or not self.process.is_alive():
            self._start()
        started = time.monotonic()
        self.connection.send(job)
        try:
            if self.connection.poll(time_limit_s):
                return "row", self.connection.recv()
        except (EOFError, ConnectionResetError):  # it closed its end, exiting: alive for a moment still, which
            return self._died()                    # was once taken for a timeout (stopped after 0.0 s)
        if self.process.is_alive():
            self.stop(kill=True)
            return "timeout", time.monotonic() - started
        return self._died()

    def _died(self) -> tuple[str, object]:
        """("died", exit code) of a worker that ended on its own, once it has (killed if it lingers)."""
        self.process.join(timeout=EXIT_WITHIN_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        code = self.process.exitcode
        self.connection.close()
        self.process = None
        return "died", code

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            try:
                self.connection.send(None)
            except (BrokenPipeError, OSError):
                self.process.kill()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()
        self.process = None
