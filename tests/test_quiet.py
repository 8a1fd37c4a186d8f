"""pipeline.host.quiet: TensorFlow's start-up noise dropped from a real process's stderr, real messages kept."""

import subprocess
import sys

from pipeline.host import launch, quiet

SCRIPT = """
import os, sys
if sys.argv[1] == "filtered":
    from pipeline.host import quiet
    quiet.filter_stderr()
import tensorflow as tf
tf.constant(1) + 1
print("warning: a real one", file=sys.stderr)
os.write(2, b"E0000 real C++ error line\\n")
"""


def _stderr(mode: str) -> str:
    env = launch.child_env(TF_CPP_MIN_LOG_LEVEL="0")
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        env=env,
        cwd=launch.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stderr


def test_filter_stderr_drops_tensorflow_noise_and_keeps_real_lines():
    raw, filtered = _stderr("raw"), _stderr("filtered")
    noise = [line for line in raw.splitlines() if quiet.is_noise(line)]
    assert noise, "this TensorFlow printed no start-up noise here: the test would prove nothing"
    assert not [line for line in filtered.splitlines() if quiet.is_noise(line)]
    for line in ("warning: a real one", "E0000 real C++ error line"):
        assert line in raw and line in filtered


def test_clean_keeps_everything_else():
    text = (
        "W0000 00:00:1 computation_placer.cc:177] computation placer already registered. Please check\n"
        "epoch 1/3: loss 0.5\n"
        "E external/local_xla/xla/stream_executor/cuda/cuda_platform.cc:51] failed call to cuInit: (303)\n"
        "error: class 'ants' has 1 image\n"
    )
    assert quiet.clean(text) == "epoch 1/3: loss 0.5\nerror: class 'ants' has 1 image\n"
