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

    ds = tf.data.Dataset.range(len(cache))
    if shuffle:
        ds = ds.shuffle(len(cache), seed=seed, reshuffle_each_iteration=True)
    onehot = np.eye(num_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]
    return image_batches(ds.batch(batch_size), cache, onehot)


def image_batches(index_batches, cache: ImageCache, onehot: np.ndarray):
    """(uint8 images, one-hot labels) for each batch of indices in ``index_batches`` (a tf.data dataset),
    gathered from ``cache`` (one ``take``: from memory, or a ``preadv`` per image from the file cache's page
    cache, never this process's RSS), two batches prefetched. Training's epochs and :func:`make_dataset` share it.
    """
    import tensorflow as tf

    size = cache.size
    onehot = tf.constant(onehot)

    def gather(idx: np.ndarray) -> np.ndarray:
        return cache.take(idx)

    def load(idx):
        images = tf.numpy_function(gather, [idx], tf.uint8, stateful=False)
        return tf.ensure_shape(images, [None, size, size, 3]), tf.gather(onehot, idx)

    return index_batches.map(load).prefetch(2)
