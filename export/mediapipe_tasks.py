"""TFLite metadata for MediaPipe Tasks / ML Kit, and MediaPipe's ImageClassifier as a verification runtime.

The metadata is written with mediapipe's own writer (``mediapipe.tasks.python.metadata``); the one
compiled function its wheel lacks is supplied by :mod:`export.metadata_version`. What it writes:
model name, version and description; the input as an RGB image of the model's size with
NormalizationOptions mean 0, std 1 (our models take raw 0..255 pixels: preprocessing is inside the
model) and, for the full-integer file, its uint8 quantization parameters in the description; the
output ``probabilities`` with ``labels.txt`` attached as TENSOR_AXIS_LABELS. Metadata lives beside
the graph in the flatbuffer: the operators, weights and outputs are unchanged (verification runs the
written files).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export import metadata_version

LABELS_FILE = "labels.txt"


@dataclass(frozen=True)
class ModelInfo:
    """What the metadata says about the model.

    Attributes:
        name: Model name.
        version: Model version (the run and the export time).
        description: One or two sentences on what the model does.
        image_size: Input height and width in pixels.
        labels: Class names in output order.
    """

    name: str
    version: str
    description: str
    image_size: int
    labels: tuple[str, ...]


def write_metadata(model: bytes, info: ModelInfo, quantization: dict | None = None) -> tuple[bytes, dict[str, Any]]:
    """Returns the TFLite flatbuffer with image-classifier metadata, and a summary of what was written.

    Args:
        model: A TFLite flatbuffer without metadata.
        info: Name, version, description, input size and labels.
        quantization: ``tflite.io_details`` of a full-integer model (uint8 input/output), else None.
    """
    metadata_version.install()
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    from mediapipe.tasks.python.metadata import metadata
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    size = info.image_size
    if quantization:
        q, o = quantization["input"]["quantization"], quantization["output"]["quantization"]
        input_text = (
            f"RGB image, {size}x{size}, uint8 pixels 0..255 (input quantization scale {q['scale']:g}, "
            f"zero point {q['zero_point']}); resize bilinearly without cropping; no normalisation."
        )
        output_text = (
            f"Class probabilities as uint8 in the order of {LABELS_FILE}: "
            f"probability = (value - {o['zero_point']}) * {o['scale']:g}."
        )
    else:
        input_text = (
            f"RGB image, {size}x{size}, float32 raw pixels 0..255 (mean 0, std 1: preprocessing is "
            "inside the model); resize bilinearly without cropping."
        )
        output_text = f"Softmax probabilities in the order of {LABELS_FILE}."
    writer = metadata_writer.MetadataWriter.create(bytearray(model))
    writer.add_general_info(info.name, info.description)
    writer.add_image_input([0.0], [1.0], fb.ColorSpaceType.RGB, name="image", description=input_text)
    writer.add_classification_output(
        metadata_writer.Labels().add(list(info.labels)), name="probabilities", description=output_text
    )
    first, _ = writer.populate()
    del writer

    # The writer has no version field: set it on the metadata it wrote and populate the original model again.
    import flatbuffers

    meta = fb.ModelMetadataT.InitFromObj(
        fb.ModelMetadata.GetRootAsModelMetadata(metadata.get_metadata_buffer(first), 0)
    )
    meta.version = info.version
    builder = flatbuffers.Builder(0)
    builder.Finish(meta.Pack(builder), metadata.MetadataPopulator.METADATA_FILE_IDENTIFIER)
    populator = metadata.MetadataPopulator.with_model_buffer(bytearray(model))
    populator.load_metadata_buffer(builder.Output())
    populator.load_associated_file_buffers({LABELS_FILE: ("\n".join(info.labels) + "\n").encode("utf-8")})
    populator.populate()
    out = bytes(populator.get_model_buffer())
    del populator  # its __del__ removes a temporary file: now, not at interpreter shutdown
    return out, read_metadata(out)


def read_metadata(model: bytes) -> dict[str, Any]:
    """A summary of a TFLite file's metadata as MediaPipe's displayer reads it (for the manifest and tests)."""
    metadata_version.install()
    from mediapipe.tasks.python.metadata import metadata

    displayer = metadata.MetadataDisplayer.with_model_buffer(bytearray(model))
    meta = json.loads(displayer.get_metadata_json())
    sub = meta["subgraph_metadata"][0]
    inp, out = sub["input_tensor_metadata"][0], sub["output_tensor_metadata"][0]
    norm = next(
        (u["options"] for u in inp.get("process_units", []) if u["options_type"] == "NormalizationOptions"), None
    )
    files = out.get("associated_files", [])
    labels = displayer.get_associated_file_buffer(files[0]["name"]).decode("utf-8").splitlines() if files else []
    return {
        "name": meta.get("name"),
        "version": meta.get("version"),
        "description": meta.get("description"),
        "min_parser_version": meta.get("min_parser_version"),
        "input": {
            "name": inp.get("name"),
            "color_space": inp["content"]["content_properties"].get("color_space"),
            "normalization": norm,
            "range": [inp["stats"]["min"][0], inp["stats"]["max"][0]],
            "description": inp.get("description"),
        },
        "output": {
            "name": out.get("name"),
            "description": out.get("description"),
            "labels_file": {"name": files[0]["name"], "type": files[0]["type"]} if files else None,
            "labels": labels,
        },
    }


@dataclass(frozen=True)
class MediaPipeResult:
    """MediaPipe ImageClassifier over a batch of images.

    Attributes:
        probs: Scores by category index, one row per image.
        top1: The top category name of each image.
        names: Category names by index, as the classifier reported them.
        latency_ms: Mean time per ``classify`` call.
    """

    probs: np.ndarray
    top1: list[str]
    names: list[str]
    latency_ms: float


def classify(path: Path, images, batch: int = 64) -> MediaPipeResult:
    """Runs MediaPipe Tasks' ImageClassifier on ``images`` (uint8 RGB already at the model's input size).

    Raises:
        RuntimeError: MediaPipe refused the model (its message says why, e.g. missing metadata).
    """
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=-1)
    try:
        classifier = vision.ImageClassifier.create_from_options(options)
    except Exception as exc:  # MediaPipe raises RuntimeError/ValueError with the calculator's message
        raise RuntimeError(
            f"MediaPipe ImageClassifier refused {path.name}: {str(exc).strip().splitlines()[0]}"
        ) from exc
    rows, top1, names, elapsed = [], [], {}, 0.0
    with classifier:
        for start in range(0, len(images), batch):
            for img in np.asarray(images[start : start + batch], dtype=np.uint8):
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img))
                t0 = time.perf_counter()
                result = classifier.classify(image)
                elapsed += time.perf_counter() - t0
                cats = result.classifications[0].categories
                row = np.zeros(len(cats), dtype=np.float32)
                for c in cats:
                    row[c.index] = c.score
                    names[c.index] = c.category_name
                rows.append(row)
                top1.append(max(cats, key=lambda c: c.score).category_name)
    return MediaPipeResult(
        np.array(rows), top1, [names[i] for i in sorted(names)], elapsed * 1000 / max(len(images), 1)
    )
