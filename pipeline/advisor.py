"""Advice for the Train page: which transfer strategy fits the data, and how long an epoch may take."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import backbones

SMALL_DATASET = 1000  # images per class below which a dataset counts as small


@dataclass(frozen=True)
class Advice:
    strategy: str
    reason: str


def recommend(images_per_class: float, similar_to_everyday_photos: bool) -> Advice:
    """The four classic cases of transfer learning (dataset size x similarity to ImageNet)."""
    small = images_per_class < SMALL_DATASET
    if small and similar_to_everyday_photos:
        return Advice("feature_extraction", "small and similar to everyday photos: keep the pretrained features, "
                      "train only a new head (turn augmentation off for the fast cached-feature path)")
    if small:
        return Advice("freeze_first_k", "small and unlike everyday photos: keep the generic first layers "
                      "frozen and retrain the rest")
    if similar_to_everyday_photos:
        return Advice("fine_tune", "large and similar: train the head, then fine-tune the whole base "
                      "at a very low learning rate")
    return Advice("from_scratch", "large and unlike everyday photos: there is enough data to learn every "
                  "layer from scratch")


# Forward-pass images/s of MobileNetV2 alpha 0.35 at 224 on 2 CPU cores, measured (BENCHMARKS.md);
# a training step costs about 3.4x a forward pass when the base trains.
_REFERENCE_FORWARD = 266.0
_REFERENCE_PARAMS = 0.4
_REFERENCE_PIXELS = 224 * 224


def epoch_seconds(backbone: str, alpha: float, image_size: int, train_images: int, val_images: int,
                  base_trains: bool) -> float:
    """A rough CPU estimate of one epoch, from the measured reference and the backbone's size."""
    spec = backbones.get(backbone)
    params = spec.params_millions * (alpha ** 2 if spec.alphas else 1.0)
    scale = max(params, 0.05) / _REFERENCE_PARAMS * (image_size * image_size) / _REFERENCE_PIXELS
    forward = _REFERENCE_FORWARD / max(scale, 0.01)
    step = forward / (3.4 if base_trains else 1.2)
    return train_images / step + val_images / forward
