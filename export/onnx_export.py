"""ONNX: ``model.onnx`` from the SavedModel's serving signature with tf2onnx, run in onnxruntime.

Installs with our pins: tf2onnx 1.17.0 (protobuf>=3.20), onnx 1.22.0 (the newest release that accepts
protobuf 5; onnx 1.23 needs protobuf>=6.31, which TensorFlow 2.19 refuses) and onnxruntime 1.32.0.
Input ``image`` float32 [N, S, S, 3] raw 0..255, output ``probabilities``, as the SavedModel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.savedmodel import INPUT_NAME, OUTPUT_NAME, SIGNATURE

OPSET = 17


def convert(saved_model_dir: Path, out_path: Path, image_size: int) -> Path:
    """Converts the SavedModel's serving signature to ONNX at ``out_path``.

    Raises:
        RuntimeError: tf2onnx could not convert the graph (its first line says why).
    """
    import tensorflow as tf
    import tf2onnx

    loaded = tf.saved_model.load(str(saved_model_dir))  # kept alive: the signature refers to its variables weakly
    serving = loaded.signatures[SIGNATURE]

    def probabilities(image):
        return {OUTPUT_NAME: serving(**{INPUT_NAME: image})[OUTPUT_NAME]}

    spec = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT_NAME)]
    try:
        tf2onnx.convert.from_function(
            tf.function(probabilities, autograph=False), input_signature=spec, opset=OPSET, output_path=str(out_path)
        )
    except Exception as exc:  # tf2onnx raises plain exceptions for unsupported ops
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(f"onnx: tf2onnx could not convert the model ({first}). Leave this format out.") from exc
    del loaded
    return out_path


def session(path: Path):
    """An onnxruntime CPU inference session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict(sess, images: np.ndarray) -> np.ndarray:
    """Probabilities for a float32 batch of raw pixels."""
    return sess.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(images, dtype=np.float32)})[0]
