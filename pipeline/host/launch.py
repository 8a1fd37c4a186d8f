"""The one way Transfer Studio starts a Python child process (worker, training child, export).

Every child runs ``python -m MODULE ...`` from this checkout (``ROOT`` first on ``PYTHONPATH``, so it works
from any current directory), in a session of its own (``start_new_session``: a Ctrl-C in the terminal or a
signal to the app's process group does not reach it, and it can be stopped as one group), with stdin closed
and stdout + stderr appended to a log file. A thread waits for it, so a child that ends is reaped at once
(no ``<defunct>`` entry under a long-lived parent such as the app) and ``poll()`` still gives its exit code.

A child that must not outlive its parent (a training child under the worker) asks the kernel itself, at its
start, for SIGKILL when the parent dies (:func:`die_with_parent`): ``preexec_fn`` could do it before exec, but
it is unsafe in a process with threads, which the worker has.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from pipeline.host.devices import GROWTH_ENV

ROOT = Path(__file__).resolve().parents[2]
PARENT_PID_VAR = "TRANSFER_STUDIO_PARENT_PID"
_PR_SET_PDEATHSIG = 1


# glibc gives threads that allocate at once their own malloc arenas (up to 8 per core) and keeps their freed
# memory; TensorFlow's thread pools allocate from many threads. One arena per core (at least 2): on 2 cores a
# whole run's peak RSS 35-40 MB lower at the same speed (BENCHMARKS.md, whole-run memory), and on a large
# machine the decoding threads still have an arena per core. A value already in the environment wins.
MALLOC_ARENAS = str(max(2, os.cpu_count() or 2))


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: ours, this checkout first on ``PYTHONPATH``, TensorFlow's C++ log quiet,
    glibc's malloc arenas capped (:data:`MALLOC_ARENAS`), GPU memory taken as needed rather than reserved whole
    (:data:`pipeline.host.devices.GROWTH_ENV`)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        **{k: os.environ.get(k, v) for k, v in GROWTH_ENV.items()},
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", MALLOC_ARENAS),
        **extra,
        "PYTHONPATH": path,
    }


def start_python(
    module: str, *args: str, log: Path, env: dict[str, str] | None = None, die_with_parent: bool = False
) -> subprocess.Popen:
    """Starts ``python -m module *args`` in its own session, output appended to ``log``.

    Args:
        module: The module to run (``pipeline``, ``pipeline.jobs.child``, ``export``).
        log: The file that receives the child's stdout and stderr (appended; created if missing).
        env: Extra environment variables for the child.
        die_with_parent: The child is SIGKILLed when this process dies (the child calls :func:`die_with_parent`).

    Returns:
        The started process (the caller reaps it with ``poll``/``wait``).
    """
    extra = dict(env or {})
    if die_with_parent:
        extra[PARENT_PID_VAR] = str(os.getpid())
    with open(log, "ab") as out:  # the child keeps its own descriptor; ours closes here
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=child_env(**extra),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    threading.Thread(target=proc.wait, name=f"reap {module} {proc.pid}", daemon=True).start()
    return proc


def die_with_parent() -> None:
    """In a child started with ``die_with_parent=True``: be SIGKILLed when that parent dies (Linux).

    Called first thing in the child's ``main``. If the parent died before this call, the child is already
    an orphan and kills itself at once. Elsewhere than Linux (no ``prctl``) it does nothing.
    """
    parent = os.environ.pop(PARENT_PID_VAR, None)
    if parent is None:
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGKILL)
