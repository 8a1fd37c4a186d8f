"""The export formats: one :class:`FormatSpec` each, from which the bundle, verification, the app's export task
and the Export page take everything they need (file name, converter family, runtime, level, gate, progress steps).

Adding a format is adding its spec here and, for a new family, its converter and runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Family = Literal["savedmodel", "tflite", "tfjs", "onnx"]


@dataclass(frozen=True)
class Gate:
    """The bounds one reduced format must stay within.

    Attributes:
        tolerance: Error on one probability the format's numerics can cause (near-tie margin = 2x this).
        min_agreement: Top-1 agreement with Keras on the decided images (margin above 2 x tolerance).
        max_loss_points: Accuracy points the format may lose on the decided images.
        warn_loss_points: Accuracy points lost (all images) past which the row carries a warning.
    """

    tolerance: float
    min_agreement: float
    max_loss_points: float
    warn_loss_points: float | None = None


FLOAT16_GATE = Gate(tolerance=0.02, min_agreement=0.99, max_loss_points=2.0)
DYNAMIC_GATE = Gate(tolerance=0.05, min_agreement=0.99, max_loss_points=2.0)
EIGHT_BIT_GATE = Gate(tolerance=0.10, min_agreement=0.90, max_loss_points=5.0, warn_loss_points=2.0)


@dataclass(frozen=True)
class FormatSpec:
    """One export format.

    Attributes:
        name: What the CLI's ``--formats``, manifest.json and verify.json call it.
        family: Its converter (``export.bundle.CONVERTERS[family]``, with ``export.tflite.PRESETS[name]``'s
            quantization for LiteRT files) and runtime family (``export.tflite``, ``export.tfjs``, ...).
        file: Its file (or folder) inside the bundle.
        runtime: The runtime it is verified in, as the format table says it.
        level: How lossy it is within its family (0 float32, 1 float16, 2 dynamic range, 3 8-bit): a format never
            passes where a less lossy one of its family, or the SavedModel, failed.
        gate: The bounds of a reduced format (None: float32, which must agree exactly: 100% top-1, |dp| <= 1e-4).
        default: Written by ``all`` (the others only on request).
        mediapipe: Also verified in MediaPipe Tasks' ImageClassifier (a TFLite file with its metadata).
    """

    name: str
    family: Family
    file: str
    runtime: str
    level: int = 0
    gate: Gate | None = None
    default: bool = True
    mediapipe: bool = False

    def path(self, bundle: Path) -> Path:
        """Where it lives inside ``bundle``."""
        return Path(bundle) / self.file

    @property
    def float32(self) -> bool:
        return self.gate is None

    @property
    def integer_output(self) -> bool:
        """Its output is quantized to 8 bits (the full-integer LiteRT file): scores come in steps."""
        return self.family == "tflite" and self.level == 3

    @property
    def mediapipe_row(self) -> str | None:
        """Its MediaPipe row's name in verify.json (``mediapipe-int8`` for ``tflite-int8``), None without one."""
        return f"mediapipe-{self.name.split('-', 1)[1]}" if self.mediapipe else None


REGISTRY: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec("savedmodel", "savedmodel", "savedmodel", "TensorFlow SavedModel"),
        FormatSpec("tflite-float32", "tflite", "model-float32.tflite", "LiteRT interpreter", mediapipe=True),
        FormatSpec(
            "tflite-float16", "tflite", "model-float16.tflite", "LiteRT interpreter", 1, FLOAT16_GATE, mediapipe=True
        ),
        FormatSpec(
            "tflite-dynamic", "tflite", "model-dynamic.tflite", "LiteRT interpreter", 2, DYNAMIC_GATE, mediapipe=True
        ),
        FormatSpec(
            "tflite-int8", "tflite", "model-int8.tflite", "LiteRT interpreter", 3, EIGHT_BIT_GATE, mediapipe=True
        ),
        FormatSpec("tfjs", "tfjs", "tfjs", "TF.js in Node"),
        FormatSpec("tfjs-float16", "tfjs", "tfjs-float16", "TF.js in Node", 1, FLOAT16_GATE),
        FormatSpec("onnx", "onnx", "model.onnx", "onnxruntime (CPU)"),
        # affine uint8 weights: on MobileNetV2 with real weights it agreed with Keras on 57% of top-1 labels
        # (depthwise kernels do not survive 8-bit affine weights), far below the gate: on request only.
        FormatSpec("tfjs-uint8", "tfjs", "tfjs-uint8", "TF.js in Node", 3, EIGHT_BIT_GATE, default=False),
    )
}
DEFAULT = tuple(name for name, spec in REGISTRY.items() if spec.default)
OPTIONAL = tuple(name for name, spec in REGISTRY.items() if not spec.default)


def get(name: str) -> FormatSpec:
    """The spec of a format (KeyError for a name that is not one: check with ``name in REGISTRY``)."""
    return REGISTRY[name]


def of_family(formats: list[str], family: Family) -> list[str]:
    return [f for f in formats if REGISTRY[f].family == family]


# The export's second process converts these formats (about half of the conversion time) and checks the files of
# these families (each a runtime of its own: TensorFlow's SavedModel loader, Node for TF.js, onnxruntime), while the
# first converts and checks the rest (export.bundle, export.verify).
CONVERTED_ELSEWHERE = ("tflite-int8", "tfjs", "tfjs-uint8", "onnx")
CHECKED_ELSEWHERE: tuple[Family, ...] = ("savedmodel", "tfjs", "onnx")


def progress_steps(formats: list[str], verify: bool = True) -> list[str]:
    """Every progress message an export of ``formats`` says, in order (``bundle.export_run`` says exactly these).

    Loading, SavedModel, one per converted format (this process's first, then the second process's), then with
    verification the Keras reference, one per format checked here, one per MediaPipe-checked file, one per format
    checked in the second process; zipping last.
    """
    steps = ["loading the trained model", "writing SavedModel"]
    converted = [f for f in formats if f != "savedmodel"]
    steps += [f"converting {f}" for f in converted if f not in CONVERTED_ELSEWHERE]
    steps += [f"converting {f}" for f in converted if f in CONVERTED_ELSEWHERE]
    if verify:
        steps.append("verifying keras (reference)")
        steps += [f"verifying {f}" for f in formats if REGISTRY[f].family not in CHECKED_ELSEWHERE]
        steps += [f"verifying {f} in MediaPipe" for f in formats if REGISTRY[f].mediapipe]
        steps += [f"verifying {f}" for f in formats if REGISTRY[f].family in CHECKED_ELSEWHERE]
    return [*steps, "zipping the bundle"]
