"""The tf.data pipeline over an :class:`~pipeline.data.cache.ImageCache`. TensorFlow is imported only when
:func:`make_dataset` runs, so importing :mod:`pipeline.data` stays light (the app imports it)."""

from __future__ import annotations

import numpy as np

from pipeline.data.cache import ImageCache


def make_dataset(
    cache: ImageCache,
    labels: np.ndarray,
    num_classes: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
):
    """A tf.data pipeline over the cache: shuffle indices (seeded), gather a batch, one-hot, prefetch.

    Images come out as uint8 (raw pixels; the model's float32 input casts them, and preprocessing is
    inside the model): a quarter of the memory of float32 batches in flight. Shuffling indices rather
    than images keeps memory at one copy of the cache. Gathering a batch is one memcpy, so one map
    call and two prefetched batches keep the model fed; AUTOTUNE buffers cost ~140 MB more here.
    """
    import tensorflow as tf

    n = len(cache)
    size = cache.size

    def gather(idx: np.ndarray) -> np.ndarray:
        return cache.take(idx)

    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    onehot = tf.one_hot(tf.constant(labels, dtype=tf.int32), num_classes)

    def load(idx):
        images = tf.numpy_function(gather, [idx], tf.uint8, stateful=False)
        images = tf.ensure_shape(images, [None, size, size, 3])
        return images, tf.gather(onehot, idx)

    return ds.map(load).prefetch(2)
