"""``python tests/without_tensorflow.py MODULE ARGS...``: runs ``python -m MODULE ARGS`` in a process where
``import tensorflow`` fails, as on a GPU machine that has JAX and no TensorFlow."""

import importlib.abc
import runpy
import sys

BLOCKED = ("tensorflow", "tf_keras", "tensorflowjs", "tf2onnx")


class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: this process has no TensorFlow)")
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, NoTensorFlow())
    module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
