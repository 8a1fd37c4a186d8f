"""Builds the training and inference models and sets what trains in each phase.

Both models take raw RGB pixels (float32, 0..255) and share every trained layer; the training
model adds augmentation in front. The Keras transfer-learning recipe is followed: the base is called
with ``training=False`` whenever it holds pretrained weights, so that its BatchNorm layers stay in
inference mode while fine-tuning.

Keras 3 caveat, found by ``tests/test_train.py``: ``fit`` calls the outer model with
``training=True``, and that overrides the ``training=False`` recorded on the nested base call
(keras-team/keras#20285), so an unfrozen BatchNorm layer *would* update its moving statistics and
undo what the base learned on ImageNet. In Keras 3 a BatchNorm layer with ``trainable=False`` always
runs in inference mode, so :func:`unfreeze_for_phase_two` keeps every BatchNorm layer of the base
frozen (as the keras-io EfficientNet fine-tuning example does): moving statistics and gamma/beta stay
as pretrained, every other unfrozen layer trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline import backbones
from pipeline.config import ConfigError, RunConfig
from pipeline.training.augment import build_augmentation


@dataclass
class Models:
    """The models of one run; all of them share the layer objects below.

    Attributes:
        train: input -> augmentation -> preprocessing -> base -> head (what ``fit`` trains end to end).
        inference: input -> preprocessing -> base -> pooling -> classifier (evaluated, saved, exported).
        features: input -> preprocessing -> base -> pooling (run once on the cached-feature path).
        head: pooled features -> dropout -> classifier (trained on cached features).
        base: the backbone.
    """

    train: Any
    inference: Any
    features: Any
    head: Any
    base: Any


def base_runs_in_inference_mode(cfg: RunConfig) -> bool:
    """Pretrained bases keep BatchNorm in inference mode; a from-scratch base trains its BatchNorm."""
    return cfg.train.strategy != "from_scratch"


def build_models(cfg: RunConfig, num_classes: int, *, weights: str | None = None) -> Models:
    """Builds the run's models (``weights`` overrides ``model.weights``: "none" when values are copied in next).

    Raises:
        backbones.WeightsUnavailableError: pretrained weights are not available offline.
    """
    import keras
    from keras import layers

    spec = backbones.get(cfg.model.backbone)
    size = cfg.model.image_size
    weights = weights or ("none" if cfg.train.strategy == "from_scratch" else cfg.model.weights)

    # === Layers ===
    base = backbones.build_base(spec, size, cfg.model.alpha, weights)
    preprocess = backbones.preprocessing_layers(spec)
    augmentation = build_augmentation(cfg.augment, cfg.train.seed)
    pool = layers.GlobalAveragePooling2D(name="pool")
    dropout = layers.Dropout(cfg.model.dropout, seed=cfg.train.seed, name="head_dropout")
    classifier = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")
    base_training = False if base_runs_in_inference_mode(cfg) else None

    def through_base(x, training):
        for layer in preprocess:
            x = layer(x)
        return pool(base(x, training=training))

    # === Functional models ===
    raw = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    # No dropout here: it is the identity at inference, and its seed variable would be the one stateful
    # op left in the graph (TFLite's int8 calibration cannot read it).
    inference = keras.Model(raw, classifier(through_base(raw, False)), name="classifier")

    raw_t = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    augmented = augmentation(raw_t) if augmentation is not None else raw_t
    train = keras.Model(raw_t, classifier(dropout(through_base(augmented, base_training))), name="trainer")

    raw_f = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    features = keras.Model(raw_f, through_base(raw_f, False), name="features")

    pooled = keras.Input(shape=(features.output_shape[-1],), name="features")
    head = keras.Model(pooled, classifier(dropout(pooled)), name="head")
    return Models(train=train, inference=inference, features=features, head=head, base=base)


# === What trains ===


def freeze_base(models: Models) -> None:
    """Head phase: the whole base frozen (``trainable=False``), only the head trains."""
    models.base.trainable = False


def unfreeze_for_phase_two(models: Models, cfg: RunConfig) -> int:
    """Second phase: unfreeze the top of the base (fine_tune) or all but the first k layers (freeze_first_k).

    Returns:
        The number of base layers left frozen.

    Raises:
        ConfigError: ``train.unfreeze_top`` or ``train.freeze_first_k`` exceeds the base's layer count.
    """
    base_layers = models.base.layers
    n = len(base_layers)
    if cfg.train.strategy == "fine_tune":
        top = cfg.train.unfreeze_top
        if top > n:
            raise ConfigError(
                f"train.unfreeze_top={top} is not allowed: {cfg.model.backbone} has {n} layers; use 0 (all) to {n}."
            )
        frozen = 0 if top == 0 else n - top
    elif cfg.train.strategy == "freeze_first_k":
        k = cfg.train.freeze_first_k or n // 2
        if k >= n:
            raise ConfigError(
                f"train.freeze_first_k={k} is not allowed: {cfg.model.backbone} has {n} layers; use 1 to {n - 1} "
                "(0 = half)."
            )
        frozen = k
    else:
        raise AssertionError(f"no second phase for {cfg.train.strategy}")
    import keras

    models.base.trainable = True
    for i, layer in enumerate(base_layers):
        if i < frozen or isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # BatchNorm: inference mode, see the module docstring
    return frozen


def unfreeze_all(models: Models) -> None:
    """from_scratch: every layer trains."""
    models.base.trainable = True


def trainable_count(model) -> int:
    """Number of trainable scalar parameters."""
    import numpy as np

    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def pooled_features(cfg: RunConfig, files: list[str], extractor, *, progress=None):
    """Pooled features of ``files`` through ``extractor`` (raw pixels -> features), decoded once to uint8 at the
    model's size and predicted in batches (the label-error search, the dataset map, the learning-rate finder)."""
    import numpy as np

    from pipeline import data as data_mod

    cache = data_mod.ImageCache(
        files,
        cfg.model.image_size,
        memory_budget_mb=cfg.data.cache_memory_mb,
        max_pixels=cfg.data.max_image_pixels,
        progress=(lambda d, t: progress(f"decoding {d}/{t}")) if progress else None,
    )
    try:
        if progress:
            progress(f"features of {len(files)} images")
        return np.asarray(extractor.predict(cache.array, batch_size=cfg.train.batch_size, verbose=0), dtype=np.float32)
    finally:
        cache.close()
