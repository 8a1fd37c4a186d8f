"""An exported file run in the runtime its users ship it to, as one function from raw pixels to probabilities.

`python -m pipeline predict RUN SOURCE --model FILE` classifies with what ships (the int8 TFLite file, the TF.js
folder, ...) instead of the Keras model, so a user can check what the shipped file says. The kind is read from the
path: a ``.tflite`` file (LiteRT), a ``.onnx`` file (onnxruntime), a folder holding ``saved_model.pb``
(TensorFlow's SavedModel runtime, no Keras) or ``model.json`` (TF.js in Node).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.host.exitcodes import UserError


class ModelFileError(UserError, ValueError):
    """The file is not an exported model this can run; the message says what it takes."""


@dataclass(frozen=True)
class Runtime:
    """An exported model ready to run.

    Attributes:
        name: The runtime, as the format table says it.
        predict: Raw RGB pixels [N, S, S, 3] (float32, 0..255) -> probabilities [N, classes].
        batch: Images per call that suit it (TF.js starts Node once per call: many images at a time).
    """

    name: str
    predict: Callable[[np.ndarray], np.ndarray]
    batch: int = 32


def load(path: str | Path) -> Runtime:
    """The runtime for an exported model file or folder.

    Raises:
        ModelFileError: it does not exist or is not one of the exported kinds.
    """
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".tflite":
        from export import tflite

        interp = tflite.interpreter(path)
        return Runtime("LiteRT interpreter", lambda x: tflite.predict(interp, x))
    if path.is_file() and path.suffix == ".onnx":
        from export import onnx_export

        sess = onnx_export.session(path)
        return Runtime("onnxruntime (CPU)", lambda x: onnx_export.predict(sess, x))
    if path.is_dir() and (path / "saved_model.pb").exists():
        from export import savedmodel

        _, fn = savedmodel.load_signature(path)
        return Runtime("TensorFlow SavedModel", fn)
    if path.is_dir() and (path / "model.json").exists():
        from export import tfjs

        if problem := tfjs.node_available("cpu"):
            raise ModelFileError(f"--model {path}: TF.js cannot run here ({problem}).")
        return Runtime("TF.js in Node", lambda x: tfjs.predict_many([path], x, latency_images=0)[0].probs, batch=512)
    raise ModelFileError(
        f"--model {path}: not an exported model (give a .tflite or .onnx file, or a savedmodel/ or TF.js folder "
        "from the run's exports/)."
    )
