"""Child processes that end when their parent does, however the parent ends.

A gateway killed with SIGKILL runs no ``finally``: its classifier worker and the embedded vLLM
would be re-parented to PID 1 and live on (seen: 900 MB per stopped gateway). Each such child
calls :func:`exit_with_parent` once; a daemon thread notices the re-parenting within
``interval_s`` and ends the child (and, for a process-group leader such as vLLM's API server,
the whole group: its EngineCore too). Polling ``getppid`` rather than ``PR_SET_PDEATHSIG``: the
latter fires when the *thread* that started the child exits, and the gateway restarts vLLM from
a worker thread.
"""

from __future__ import annotations

import os
import signal
import threading
import time


def exit_with_parent(*, whole_group: bool = False, interval_s: float = 1.0,
                     grace_s: float = 5.0) -> None:
    """Start the watch (idempotent per process)."""
    if getattr(exit_with_parent, "_started_in", None) == os.getpid():
        return
    exit_with_parent._started_in = os.getpid()  # type: ignore[attr-defined]
    parent = os.getppid()
    if parent == 1:  # already orphaned (or started by init): nothing to follow
        return
    threading.Thread(
        target=_watch, args=(parent, whole_group, interval_s, grace_s),
        name="exit-with-parent", daemon=True,
    ).start()


def _watch(parent: int, whole_group: bool, interval_s: float, grace_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval_s)
    if whole_group and os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(1)
