"""A finished run's model for one photo at a time (the Try page's server column): loaded once, raw RGB pixels in,
classes and probabilities out. Bulk prediction never runs here: it is a job (``python -m pipeline ...``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.runs.confidence import threshold_of_run
from pipeline.runs.folder import RunFolder, load_model


def centre_square(frame: np.ndarray, size: int) -> np.ndarray:
    """A camera frame's centre square at ``size`` x ``size`` (as MediaPipe's classifier crops: never squashed)."""
    from PIL import Image

    side = min(frame.shape[:2])
    top, left = (frame.shape[0] - side) // 2, (frame.shape[1] - side) // 2
    square = Image.fromarray(frame[top : top + side, left : left + side])
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


@dataclass(frozen=True)
class Classifier:
    """The run's inference model with its classes and input size.

    Raises (from :meth:`load`):
        DamagedFileError, RunNotReadyError, OSError: the model, config or dataset file cannot be read.
    """

    model: object
    classes: tuple[str, ...]
    size: int
    threshold: float | None = None  # "none of these" below it (None: the run has no evaluation)

    @classmethod
    def load(cls, run: RunFolder) -> Classifier:
        return cls(
            model=load_model(run),
            classes=tuple(run.splits().classes),
            size=run.settings().model.image_size,
            threshold=threshold_of_run(run),
        )

    def unsure(self, probability: float) -> bool:
        """A top-1 ``probability`` below the run's confidence threshold: maybe none of these classes."""
        return self.threshold is not None and probability < self.threshold

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities of one image of raw RGB pixels (``size`` x ``size`` x 3, uint8)."""
        return self.model.predict(pixels[None].astype("float32"), verbose=0)[0]

    def top(self, pixels: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most likely classes, most likely first."""
        probs = self.probabilities(pixels)
        return [(self.classes[i], float(probs[i])) for i in probs.argsort()[::-1][:k]]
