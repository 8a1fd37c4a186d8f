"""Labelled images in: sources and safe unzipping, image decoding, the scan, splits, the uint8 cache, and tf.data.

A *source* is a folder of class sub-folders, a folder of split folders (``train/`` plus ``val/`` or
``validation/`` and/or ``test/``, each holding class sub-folders), a ``.zip`` of either, or an
embedded sample (``sample:digits``). Everything is resolved to a folder, scanned once (every file
hashed and decoded, every skip named with its reason), split, and gathered at the model's input size
into a uint8 cache that the tf.data pipeline shuffles and batches. Each file is decoded once per
(content, size): the scan, given the model's size, leaves it in the decoded-image cache
(:mod:`pipeline.data.decoded`), where the training cache, a retrain, evaluation and the label-error search find
it (photos; a thumbnail is decoded again, which is cheaper). Many files are decoded on every core
(:func:`decode_many`).

One concern per module, each importing only the ones before it (no cycle):

- ``errors``: :class:`DataError`, :class:`DecodeBudgetError`, and the ``ProgressFn`` callback type;
- ``sources``: what a source is and its absolute form, safe unzipping, the embedded samples;
- ``decode``: one image to RGB uint8 within the decode budget, and many files on every core;
- ``scanning``: :class:`ScanReport` and :func:`scan` (bad files, duplicates, conflicts, sizes, warnings);
- ``splits``: :class:`Splits`, :func:`make_splits`, :func:`test_from`, :func:`class_weights`;
- ``cache``: :class:`ImageCache`, the split's images as uint8 in memory or on disk;
- ``tfdata``: :func:`make_dataset`, the only place that imports TensorFlow (when it runs).

This module re-exports their public names, so ``from pipeline import data; data.scan(...)`` is the way in.
"""

from pipeline.data.cache import ImageCache
from pipeline.data.decode import (
    DecodeBudget,
    Decoded,
    decode_budget,
    decode_file,
    decode_image_bytes,
    decode_many,
    decode_workers,
    load_image,
    load_image_cached,
    pool_kind,
)
from pipeline.data.errors import DataError, DecodeBudgetError, ProgressFn
from pipeline.data.scanning import CONFLICT, DUPLICATE, SPLIT_NAMES, ScanReport, scan
from pipeline.data.sources import (
    SAMPLES,
    absolute_source,
    file_sha256,
    is_sample,
    materialize_sample,
    resolve_source,
    safe_extract_zip,
    sample_preset,
    unwrap_single_folder,
    zip_folder,
)
from pipeline.data.splits import Splits, class_weights, make_splits, test_from
from pipeline.data.tfdata import image_batches, make_dataset

__all__ = [
    "CONFLICT",
    "DUPLICATE",
    "SAMPLES",
    "SPLIT_NAMES",
    "DataError",
    "DecodeBudget",
    "DecodeBudgetError",
    "Decoded",
    "ImageCache",
    "ProgressFn",
    "ScanReport",
    "Splits",
    "absolute_source",
    "class_weights",
    "decode_budget",
    "decode_file",
    "decode_image_bytes",
    "decode_many",
    "decode_workers",
    "file_sha256",
    "is_sample",
    "load_image",
    "load_image_cached",
    "image_batches",
    "make_dataset",
    "make_splits",
    "test_from",
    "materialize_sample",
    "pool_kind",
    "resolve_source",
    "zip_folder",
    "safe_extract_zip",
    "sample_preset",
    "scan",
    "unwrap_single_folder",
]
