"""Where a run trains: the backend, the devices, the precision and, on several devices, data parallelism.

:func:`place` is called once per training process, before any model is built:

- **Precision** is ``train.precision`` (float32 by default on every device: mixed precision was measured
  slower for our backbones, see BENCHMARKS.md); the saved and exported model is float32 whatever it is.
- **Devices**: on a GPU machine, ``train.devices`` GPUs, or when it is 0 ``train.gpus`` of them (0: one), of
  those the process sees (the worker gave it its own, ``CUDA_VISIBLE_DEVICES``); else the CPU, which
  ``train.devices`` = N > 1 splits into N logical devices (TensorFlow:
  ``tf.config.set_logical_device_configuration``; JAX: ``--xla_force_host_platform_device_count``, which
  must be in ``XLA_FLAGS`` before JAX starts: the job's process sets it, :func:`xla_flags_for`).
- **Several devices** train data-parallel: ``tf.distribute.MirroredStrategy`` on TensorFlow,
  ``keras.distribution.DataParallel`` on JAX. ``train.batch_size`` is per device; a step sees
  batch_size x devices images.
- **XLA** (``jit_compile``) on TensorFlow only on a GPU: on this CPU it made a fine-tune step 28x slower
  (110 vs 3.9 images/s). JAX always compiles.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ConfigError, RunConfig
from pipeline.host.devices import gpus_wanted


@dataclass
class Placement:
    """How this process trains (the ``start`` event's ``backend``, ``devices`` and ``precision``)."""

    backend: str
    devices: list[str]
    precision: str
    given: str
    jit: bool
    strategy: Any = None  # tf.distribute.MirroredStrategy on several TensorFlow devices
    distribution: Any = None  # keras.distribution.DataParallel on several JAX devices
    notes: list[str] = field(default_factory=list)

    @property
    def replicas(self) -> int:
        return len(self.devices) if (self.strategy is not None or self.distribution is not None) else 1

    def scope(self):
        """Where models and optimizers are built (the strategy's scope on several TensorFlow devices)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "devices": {"given": self.given, "framework": self.devices, "replicas": self.replicas},
            "precision": self.precision,
        }


def xla_flags_for(cfg: RunConfig, environ: dict[str, str] | None = None) -> str | None:
    """``XLA_FLAGS`` with the host-device count a JAX run on ``train.devices`` CPUs needs (None: unchanged)."""
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if cfg.train.devices <= 1 or "xla_force_host_platform_device_count" in flags:
        return None
    return f"{flags} --xla_force_host_platform_device_count={cfg.train.devices}".strip()


def prepare_process(cfg: RunConfig) -> str:
    """Before Keras is imported: the backend (``train.backend`` or ``$KERAS_BACKEND``) and, for a JAX run on
    several CPU devices, ``XLA_FLAGS``. Returns the backend.

    Raises:
        DeviceError: Keras already runs on another backend in this process.
    """
    import sys

    from pipeline.host.devices import select_backend

    backend = select_backend(cfg.train.backend)
    if backend == "jax" and "jax" not in sys.modules and (flags := xla_flags_for(cfg)) is not None:
        os.environ["XLA_FLAGS"] = flags
    return backend


def place(cfg: RunConfig) -> Placement:
    """Sets this process's precision, determinism and devices for ``cfg``; returns what it chose.

    Raises:
        ConfigError: ``train.devices`` asks for more devices than there are, or the CPU can no longer be split.
    """
    import keras

    given = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
    if keras.backend.backend() == "jax":
        out = _place_jax(cfg, given)
    elif keras.backend.backend() == "tensorflow":
        out = _place_tensorflow(cfg, given)
    else:
        raise ConfigError(f"KERAS_BACKEND={keras.backend.backend()!r}: Transfer Studio trains on tensorflow or jax.")
    keras.mixed_precision.set_global_policy(cfg.train.precision)  # last: nothing above leaves it changed
    if out.replicas > 1:
        out.notes.append(
            f"data-parallel on {out.replicas} devices ({', '.join(out.devices)}): each step sees "
            f"{cfg.train.batch_size} x {out.replicas} = {cfg.train.batch_size * out.replicas} images"
        )
    return out


def _take(cfg: RunConfig, names: list[str], kind: str) -> list[str]:
    """The devices a run trains on: ``train.devices`` of ``names``, or on GPUs ``train.gpus`` (0: one)."""
    if kind == "GPU" and not cfg.train.devices:
        want, key = gpus_wanted(vars(cfg.train)), "train.gpus"
    else:
        want, key = cfg.train.devices or 1, "train.devices"
    if want > len(names):
        raise ConfigError(
            f"{key}={want} is not allowed: this process sees {len(names)} {kind} device(s) "
            f"({', '.join(names)}); use 1 to {len(names)}."
        )
    return names[:want]


def _place_tensorflow(cfg: RunConfig, given: str) -> Placement:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised: the setting stands as it is
            tf.config.experimental.set_memory_growth(gpu, True)
    if not gpus and cfg.train.devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cfg.train.devices
            )
        except RuntimeError as exc:
            if len(tf.config.list_logical_devices("CPU")) < cfg.train.devices:
                raise ConfigError(
                    f"train.devices={cfg.train.devices}: TensorFlow already started in this process "
                    "with one CPU device; train in a new process (a job does)."
                ) from exc
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    kind = "GPU" if gpus else "CPU"
    names = _take(cfg, [d.name for d in tf.config.list_logical_devices(kind)], kind)
    strategy = tf.distribute.MirroredStrategy(names) if len(names) > 1 else None
    return Placement("tensorflow", names, cfg.train.precision, given, jit=bool(gpus), strategy=strategy)


def _place_jax(cfg: RunConfig, given: str) -> Placement:
    import jax
    import keras

    devices = jax.devices()
    names = _take(cfg, [f"{d.platform}:{d.id}" for d in devices], devices[0].platform.upper())
    chosen = devices[: len(names)]
    distribution = None
    if len(chosen) > 1:
        distribution = keras.distribution.DataParallel(devices=chosen)
        keras.distribution.set_distribution(distribution)
    return Placement("jax", names, cfg.train.precision, given, jit=True, distribution=distribution)


def release(placement: Placement) -> None:
    """Back to one device and float32 (the saved model is built after this)."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    if placement.distribution is not None:
        keras.distribution.set_distribution(None)
