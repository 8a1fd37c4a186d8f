"""TensorFlow's start-up noise, recognised and kept out of the CLI's stderr and the app's log panel.

TensorFlow's C++ runtime writes straight to file descriptor 2 as it loads, whatever Python's logging says:
on a machine without a GPU, "Unable to register cuFFT/cuDNN/cuBLAS factory", "failed call to cuInit",
"computation placer already registered" and a few lines about CPU instructions and oneDNN. They are not
about the user's run, and on a CPU machine they read as failures. ``TF_CPP_MIN_LOG_LEVEL=2`` hides the
informational ones only; a level that hid these would hide real errors too. So the lines are matched
one by one: :func:`is_noise` for logs read back (the app), :func:`filter_stderr` for a CLI process
(descriptor 2 becomes a pipe whose lines, noise dropped, go to the real stderr).
"""

from __future__ import annotations

import os
import re
import sys
import threading

_NOISE = re.compile(
    r"Unable to register cu(FFT|DNN|BLAS) factory"
    r"|failed call to cuInit"
    r"|Could not find cuda drivers on your machine"
    r"|computation placer already registered"
    r"|All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|^To enable the following instructions: .* rebuild TensorFlow"
    r"|TF-TRT Warning: Could not find TensorRT"
    # The converters' own chatter, once per conversion (the export's progress lines say what is converted):
    r"|tf_tfl_flatbuffer_helpers\.cc:\d+\] Ignored (output_format|drop_control_dependency)\."
    r"|mlir_graph_optimization_pass\.cc:\d+\] MLIR V1 optimization pass is not enabled"
    r"|^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    r"|^fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+"
    r"|devices\.cc:\d+\] Number of eligible GPUs \(core count >= \d+, compute capability >= [\d.]+\): \d+"
    r"|single_machine\.cc:\d+\] Starting new session$"
)


def is_noise(line: str) -> bool:
    """Whether ``line`` is one of TensorFlow's start-up messages that say nothing about the run."""
    return bool(_NOISE.search(line))


def clean(text: str) -> str:
    """``text`` without its noise lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not is_noise(line))


_installed = False


_END = b"\x00stderr-filter-end\n"


def filter_stderr() -> None:
    """From now on, lines written to this process's stderr (Python or C++) reach it without the noise.

    Call before TensorFlow is imported. Idempotent. A daemon thread copies the lines, so a line written
    just before the process exits may be lost only if the process dies by a signal.
    """
    global _installed
    if _installed:
        return
    _installed = True
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as src, os.fdopen(real, "wb", buffering=0) as dst:
            for line in iter(src.readline, b""):
                if line == _END:
                    break
                if not is_noise(line.decode("utf-8", "replace")):
                    dst.write(line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    import atexit

    def drain() -> None:  # let the pump write what is already in the pipe before the interpreter ends
        sys.stderr.flush()
        # The end is a line of its own, not the pipe's end of file: a child that outlives this process (the
        # resource tracker of a multiprocessing pool) holds a write end, and waiting for EOF cost 2 s per exit.
        os.write(2, _END)
        os.dup2(real, 2)
        thread.join(timeout=2)

    atexit.register(drain)
