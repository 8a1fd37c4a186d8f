"""pipeline.host.launch: children are reaped, find this checkout from anywhere, and die with their parent."""

import os
import signal
import subprocess
import sys
import time

import psutil

from pipeline.host import launch


def _status(pid: int) -> str:
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return "gone"


def _wait_status(pid: int, wanted: set[str], seconds: float = 20) -> str:
    deadline = time.monotonic() + seconds
    while (status := _status(pid)) not in wanted and time.monotonic() < deadline:
        time.sleep(0.1)
    return status


def test_child_is_reaped_and_keeps_its_exit_code(tmp_path):
    proc = launch.start_python("tests.launch_probe", "exit", log=tmp_path / "child.log")
    # no poll()/wait() here: that would reap the child itself; only launch's own reaper may take it away
    assert _wait_status(proc.pid, {"gone"}, 20) == "gone", "the ended child is still in the process table (not reaped)"
    assert proc.poll() == 7


def test_child_runs_in_a_session_of_its_own(tmp_path):
    proc = launch.start_python("tests.launch_probe", "hold", log=tmp_path / "child.log")
    try:
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0)  # session leader of a new session, not ours
    finally:
        proc.kill()
        proc.wait(10)


def test_child_dies_with_its_parent(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.launch_probe", "parent", str(tmp_path / "hold.log")],
        cwd=tmp_path,
        env=launch.child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        held = int(parent.stdout.readline())
        assert psutil.Process(held).is_running()
        time.sleep(1.0)  # let it reach die_with_parent()
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        # killed: gone, or a zombie waiting for whichever process adopted it to reap it
        assert _wait_status(held, {"gone", psutil.STATUS_ZOMBIE}, 10) in {"gone", psutil.STATUS_ZOMBIE}, (
            "the child outlived its SIGKILLed parent"
        )
    finally:
        parent.kill()
        parent.wait()
