"""Batches for ``fit`` without tf.data: the feed a run on Keras's JAX backend trains from.

Same contract as the TensorFlow feed (:mod:`pipeline.data.tfdata` and ``train._epoch_batches``): uint8
images gathered from the :class:`~pipeline.data.cache.ImageCache` a batch at a time, one-hot labels, and an
epoch order that is a pure function of (seed, epoch), so a resumed phase sees the batches an uninterrupted
one would. A thread reads the next batches while the device trains on this one (``preadv`` and numpy
release the GIL). Class weights become per-image sample weights (Keras takes ``class_weight`` for arrays and
tf.data only).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

PREFETCH = 2


class WaitClock:
    """Seconds the training loop spent waiting for the next batch (the device idle on input)."""

    def __init__(self):
        self.seconds = 0.0


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of ``n`` training images in ``epoch``: depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def epoch_index_batches(
    n: int, batch_size: int, seed: int, first_epoch: int, epochs: int, multiple_of: int = 1, views: int = 1
) -> Iterator[np.ndarray]:
    """Index batches for epochs ``first_epoch`` .. ``epochs`` - 1, each epoch in :func:`epoch_order`.

    ``multiple_of``: data-parallel steps split a batch evenly over the devices, so an epoch's last, short
    batch is cut to a multiple of the device count (at most ``multiple_of`` - 1 images of that epoch left out).
    ``views``: the data holds that many copies of the ``n`` items one after another; epoch e reads copy e mod views.
    """
    for epoch in range(first_epoch, epochs):
        order = epoch_order(n, seed, epoch) + n * (epoch % views)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            idx = idx[: len(idx) - len(idx) % multiple_of]
            if len(idx):
                yield idx


def steps_per_epoch(n: int, batch_size: int, multiple_of: int = 1) -> int:
    """Batches :func:`epoch_index_batches` yields per epoch."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= multiple_of else 0)


def prefetched(items: Iterator, depth: int = PREFETCH, clock: WaitClock | None = None) -> Iterator:
    """``items`` produced by a thread, ``depth`` ahead; an error there is raised here, in order. ``clock``
    adds up the time spent waiting for an item. Closing the generator (or dropping it: ``fit`` stopped early,
    a cancel) stops the thread and waits for it, so it never reads a cache after the cache is closed."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer
            put(("error", exc))

    thread = threading.Thread(target=produce, name="feed", daemon=True)
    thread.start()
    try:
        while True:
            t0 = time.perf_counter()
            kind, item = q.get()
            if clock is not None:
                clock.seconds += time.perf_counter() - t0
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)


def image_batches(
    index_batches: Iterator[np.ndarray],
    take: Callable[[np.ndarray], np.ndarray],
    onehot: np.ndarray,
    class_weight: dict[int, float] | None = None,
    clock: WaitClock | None = None,
) -> Iterator[tuple]:
    """(uint8 images, one-hot labels[, sample weights]) for each index batch, read ahead by a thread."""
    weights = None
    if class_weight:
        weights = np.array([class_weight.get(k, 1.0) for k in range(onehot.shape[1])], dtype=np.float32)

    def batches():
        for idx in index_batches:
            y = onehot[idx]
            yield (take(idx), y) if weights is None else (take(idx), y, weights[y.argmax(axis=1)])

    return prefetched(batches(), clock=clock)


def feature_batches(
    index_batches: Iterator[np.ndarray],
    features: np.ndarray,
    onehot: np.ndarray,
    class_weight: dict[int, float] | None = None,
    clock: WaitClock | None = None,
) -> Iterator[tuple]:
    """(pooled features, one-hot labels[, sample weights]) for each index batch (the cached-feature head)."""
    return image_batches(index_batches, lambda idx: features[idx], onehot, class_weight, clock)


# Images per forward pass of the features, validation and evaluation, whatever the training batch: on 2 cores
# MobileNetV2 0.35 @ 224 runs 223 / 326 / 306 images/s at 16 / 32 / 64, and 64 raised a whole run's peak RSS by
# ~300 MB (BENCHMARKS.md, issue 26). One size (and uint8 pixels) for all: the inference model's predict step is
# traced once, for validation, and evaluation reuses it.
PREDICT_BATCH = 32


def in_order(n: int, batch_size: int, take: Callable[[np.ndarray], np.ndarray], multiple_of: int = 1):
    """A re-iterable, finite ``keras.utils.PyDataset`` of every image once, in order (validation, features).

    With ``multiple_of`` > 1 (data-parallel) the last batch is padded with copies of its last image to a
    multiple of the device count; :func:`predict_all` drops what the padding produced.
    """
    import keras

    class Ordered(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.starts = list(range(0, n, batch_size))

        def __len__(self):
            return len(self.starts)

        def __getitem__(self, i):
            idx = np.arange(self.starts[i], min(self.starts[i] + batch_size, n))
            if len(idx) % multiple_of:
                idx = np.concatenate([idx, np.full(multiple_of - len(idx) % multiple_of, idx[-1])])
            return take(idx)

    return Ordered()


def predict_all(
    model, n: int, batch_size: int, take: Callable[[np.ndarray], np.ndarray], multiple_of: int = 1
) -> np.ndarray:
    """``model``'s outputs for images 0 .. n - 1 (read with ``take``), in order, the padding dropped (only the
    last batch is padded, at its end; ``batch_size`` is a multiple of ``multiple_of``)."""
    return np.asarray(model.predict(in_order(n, batch_size, take, multiple_of), verbose=0))[:n]
