"""This machine's GPUs, the share each training child gets, and the Keras backend a process runs on.

Nothing here imports TensorFlow, JAX or Keras at module level: the worker, which hands out GPUs, stays light.

- :func:`visible_gpu_ids`: the GPUs this process may hand out (``CUDA_VISIBLE_DEVICES``, else the driver's list).
- :class:`DevicePool`: the worker's free GPUs; a job asking for ``train.gpus=N`` takes N of them or waits.
- :data:`GROWTH_ENV`: GPU memory grows on demand in every child (TensorFlow and JAX) rather than being
  reserved whole, so a child given one GPU never holds memory on another.
- :func:`select_backend`: sets ``KERAS_BACKEND`` before Keras is imported (``train.backend``); on JAX the
  process cannot import TensorFlow from then on (:func:`block_tensorflow`).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.host.exitcodes import UserError

# TensorFlow reserves nearly all memory of every GPU it sees, JAX 75% of each, unless told otherwise.
GROWTH_ENV = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
BACKENDS = ("tensorflow", "jax")


class DeviceError(UserError, ValueError):
    """A job asks for devices this machine cannot give, or the backend cannot be chosen any more."""


def visible_gpu_ids(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPU ids this process may hand out, as ``CUDA_VISIBLE_DEVICES`` spells them.

    ``CUDA_VISIBLE_DEVICES`` when set (CUDA stops at the first ``-1``: ``-1`` hides every GPU), else one id per
    GPU the NVIDIA driver lists (``/proc/driver/nvidia/gpus``), else none. Loads no framework.
    """
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for part in (p.strip() for p in visible.split(",")):
            if not part or part == "-1":
                break
            ids.append(part)
        return ids
    gpus = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(gpus.iterdir())))] if gpus.is_dir() else []


def gpus_wanted(train: Mapping[str, Any]) -> int:
    """GPUs a job asks for, from its config's ``train`` section: ``train.gpus``, 0 meaning one."""
    return max(1, int(train.get("gpus", 0) or 0))


def jobs_at_once(ids: list[str]) -> int:
    """How many jobs the local worker runs at once by default: one per GPU, one without a GPU."""
    return max(1, len(ids))


class DevicePool:
    """The worker's GPUs: each job takes its own (``train.gpus`` of them, default one) and gives them back.

    Without GPUs the pool hands out nothing and every job runs on the CPU (``take`` returns ``[]``).
    """

    def __init__(self, ids: list[str]):
        self.ids = list(ids)
        self.free = list(ids)

    def fits(self, train: Mapping[str, Any]) -> bool:
        """True when a job with this ``train`` section can start now (or can never start: it is then refused)."""
        if not self.ids:
            return True
        need = gpus_wanted(train)
        return need <= len(self.free) or need > len(self.ids)

    def take(self, train: Mapping[str, Any]) -> list[str]:
        """The GPUs a job gets, removed from the free list.

        Raises:
            DeviceError: the job asks for more GPUs than this machine has.
        """
        if not self.ids:
            return []
        need = gpus_wanted(train)
        if need > len(self.ids):
            raise DeviceError(
                f"train.gpus={need} is more than the {len(self.ids)} GPU(s) this worker has "
                f"({','.join(self.ids)}); ask for at most {len(self.ids)}."
            )
        if need > len(self.free):
            raise AssertionError("take() without fits()")
        got, self.free = self.free[:need], self.free[need:]
        return got

    def give_back(self, ids: list[str]) -> None:
        self.free.extend(i for i in ids if i not in self.free)
        self.free.sort(key=self.ids.index)


def child_device_env(ids: list[str]) -> dict[str, str]:
    """The environment that gives a child exactly ``ids`` (nothing to add on a machine without GPUs)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(ids)} if ids else {}


def backend_name(configured: str = "") -> str:
    """The Keras backend a run trains on: ``train.backend``, else ``$KERAS_BACKEND``, else tensorflow."""
    return configured or os.environ.get("KERAS_BACKEND") or "tensorflow"


def select_backend(configured: str = "", *, strict: bool = True) -> str:
    """Makes :func:`backend_name` the Keras backend of this process; call it before anything imports Keras.

    ``strict=False`` (evaluation, the label-error search: a model.keras runs on either backend): where Keras is
    already imported keep its backend instead of refusing, where JAX is missing stay on TensorFlow, and never
    block TensorFlow. Returns the backend in force.

    Raises:
        DeviceError: Keras is already imported on another backend (the choice is made once per process).
    """
    want = backend_name(configured)
    if want not in BACKENDS:
        raise DeviceError(f"KERAS_BACKEND={want!r}: Transfer Studio trains on tensorflow or jax.")
    if not strict:
        if "keras" in sys.modules:
            import keras

            return keras.backend.backend()
        if want == "jax" and importlib.util.find_spec("jax") is None:
            return os.environ.get("KERAS_BACKEND") or "tensorflow"  # a model.keras runs on TensorFlow too
        os.environ["KERAS_BACKEND"] = want
        return want
    if "keras" in sys.modules:
        import keras

        have = keras.backend.backend()
        if have != want:
            raise DeviceError(
                f"train.backend={want!r}, but this process already runs Keras on {have}; "
                f"start it with KERAS_BACKEND={want} (a job's process does so by itself)."
            )
        return want
    os.environ["KERAS_BACKEND"] = want
    if want == "jax":
        block_tensorflow()
    return want


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    """Refuses ``import tensorflow`` (Keras then finds it unavailable, as on a machine without it)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(
                f"No module named {name!r}: this process trains on Keras's JAX backend and does not load TensorFlow"
            )
        return None


def block_tensorflow() -> None:
    """From now on ``import tensorflow`` fails in this process (idempotent; TensorFlow not yet imported).

    A JAX run must not load TensorFlow where it is installed either: Keras would (``keras.utils.set_random_seed``
    seeds TensorFlow's generator when TensorFlow can be imported), costing its start-up time and memory, and a
    run would then behave differently here than on a GPU machine that has no TensorFlow.
    """
    if "tensorflow" not in sys.modules and not any(isinstance(f, _NoTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoTensorFlow())
