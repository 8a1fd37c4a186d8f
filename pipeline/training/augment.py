"""Training-time augmentation as Keras layers: the same layers the app previews and training uses."""

from __future__ import annotations

from pipeline.config import AugmentConfig


def build_augmentation(cfg: AugmentConfig, seed: int):
    """A ``keras.Sequential`` of random transforms on raw 0..255 pixels, or None when none is active.

    Each layer is active only in training mode, so calling the model with ``training=False``
    (evaluation, export) skips them.
    """
    import keras
    from keras import layers

    steps = []
    if cfg.enabled:
        if cfg.flip != "none":
            steps.append(layers.RandomFlip(cfg.flip, seed=seed))
        if cfg.rotation > 0:
            steps.append(layers.RandomRotation(cfg.rotation, fill_mode="reflect", seed=seed + 1))
        if cfg.zoom > 0:
            steps.append(layers.RandomZoom(cfg.zoom, fill_mode="reflect", seed=seed + 2))
        if cfg.translation > 0:
            steps.append(layers.RandomTranslation(cfg.translation, cfg.translation, fill_mode="reflect", seed=seed + 3))
        if cfg.contrast > 0:
            steps.append(layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed + 4))
        if cfg.brightness > 0:
            steps.append(layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=seed + 5))
    return keras.Sequential(steps, name="augmentation") if steps else None


def preview(image, cfg: AugmentConfig, *, count: int = 9, seed: int = 0):
    """``count`` random augmentations of one uint8 HxWx3 image, as uint8 arrays (for the 3x3 grid)."""
    import numpy as np

    aug = build_augmentation(cfg, seed)
    batch = np.repeat(np.asarray(image, dtype=np.float32)[None], count, axis=0)
    out = aug(batch, training=True) if aug is not None else batch
    return np.clip(np.asarray(out), 0, 255).astype(np.uint8)
