"""Advice for the Train page: which transfer strategy fits the data (times: pipeline.quality.estimate)."""

from __future__ import annotations

from dataclasses import dataclass

SMALL_DATASET = 1000  # images per class below which a dataset counts as small


@dataclass(frozen=True)
class Advice:
    strategy: str
    reason: str


def recommend(images_per_class: float, similar_to_everyday_photos: bool) -> Advice:
    """The four classic cases of transfer learning (dataset size x similarity to ImageNet)."""
    small = images_per_class < SMALL_DATASET
    if small and similar_to_everyday_photos:
        return Advice(
            "feature_extraction",
            "small and similar to everyday photos: keep the pretrained features, "
            "train only a new head (turn augmentation off for the fast cached-feature path)",
        )
    if small:
        return Advice(
            "freeze_first_k",
            "small and unlike everyday photos: keep the generic first layers frozen and retrain the rest",
        )
    if similar_to_everyday_photos:
        return Advice(
            "fine_tune", "large and similar: train the head, then fine-tune the whole base at a very low learning rate"
        )
    return Advice(
        "from_scratch", "large and unlike everyday photos: there is enough data to learn every layer from scratch"
    )
