"""The optimizer every phase compiles: Adam, with TensorFlow's fused kernel where it applies."""

from __future__ import annotations

import functools


def adam(learning_rate, *, fused: bool):
    """Keras's Adam at ``learning_rate`` (a float or a schedule); :func:`fused_adam_class`'s when ``fused``.

    ``fused`` only on TensorFlow on one device: the fused kernel takes one variable's handle, which a
    mirrored variable under ``tf.distribute`` does not have, and JAX has no such kernel (Keras's own update,
    compiled by XLA, is one fused computation there anyway).
    """
    import keras

    return fused_adam_class()(learning_rate) if fused else keras.optimizers.Adam(learning_rate)


@functools.cache
def fused_adam_class():
    """Keras's Adam whose TensorFlow step is TensorFlow's own fused kernel, one op per variable.

    Keras 3 writes Adam's update as about a dozen small ops per variable; on TensorFlow ``ResourceApplyAdam``
    computes the same formula (``m += (g - m)(1 - b1)``, ``v += (g^2 - v)(1 - b2)``,
    ``var -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``) in one kernel. Measured in BENCHMARKS.md
    (bench/bench_optimizer.py). Only public Keras API: the slots are made with ``add_optimizer_variables`` (the
    names Keras's Adam gives them, so checkpoints are the same) and kept here by their variable (TensorFlow's
    update step is given the tf.Variable inside each Keras variable, its public ``value``); a gradient that
    is not a dense tensor takes Keras's formula, written with ``keras.ops``.
    """
    import keras
    import tensorflow as tf
    from keras import ops

    class FusedAdam(keras.optimizers.Adam):
        def __init__(self, *args, **kwargs):
            if kwargs.get("amsgrad"):
                raise ValueError("FusedAdam has no amsgrad; use keras.optimizers.Adam")
            super().__init__(*args, **kwargs)
            self.slots: dict[str, tuple] = {}

        def build(self, var_list):
            if self.built:
                return
            keras.optimizers.Optimizer.build(self, var_list)  # the base's variables (iterations, learning rate)
            momentums, velocities = self.add_optimizer_variables(var_list, ["momentum", "velocity"])
            self.slots = {_key(v): (m, u) for v, m, u in zip(var_list, momentums, velocities, strict=True)}

        def update_step(self, gradient, variable, learning_rate):
            m, v = self.slots[_key(variable)]
            dtype = variable.dtype
            step = ops.cast(self.iterations + 1, dtype)
            if isinstance(gradient, tf.Tensor):
                beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
                tf.raw_ops.ResourceApplyAdam(
                    var=_handle(variable),
                    m=_handle(m),
                    v=_handle(v),
                    beta1_power=tf.pow(beta_1, step),
                    beta2_power=tf.pow(beta_2, step),
                    lr=tf.cast(learning_rate, dtype),
                    beta1=beta_1,
                    beta2=beta_2,
                    epsilon=tf.cast(self.epsilon, dtype),
                    grad=tf.cast(gradient, dtype),
                )
                return
            lr, gradient = ops.cast(learning_rate, dtype), ops.cast(gradient, dtype)
            alpha = (
                lr
                * ops.sqrt(1 - ops.power(ops.cast(self.beta_2, dtype), step))
                / (1 - ops.power(ops.cast(self.beta_1, dtype), step))
            )
            self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
            self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
            self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon)))

    def _key(variable) -> int:
        return id(variable.value if isinstance(variable, keras.Variable) else variable)

    return FusedAdam


def _handle(variable):
    """The resource handle of a tf.Variable, or of the tf.Variable inside a Keras variable (its public ``value``)."""
    return variable.handle if hasattr(variable, "handle") else variable.value.handle
