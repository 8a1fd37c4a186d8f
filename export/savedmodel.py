"""SavedModel with one named signature: ``image`` (raw RGB, float32 0..255) in, ``probabilities`` out."""

from __future__ import annotations

from pathlib import Path

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
SIGNATURE = "serving_default"


def export_savedmodel(model, out_dir: Path, image_size: int) -> Path:
    """Writes ``model`` (the run's inference model) as a SavedModel under ``out_dir``.

    Uses Keras's ``ExportArchive``: a plain ``tf.Module`` around a Keras 3 model leaves its weights as
    resource variables that the TFLite converter does not freeze (READ_VARIABLE ops, and the int8
    calibration then fails), while the archive's endpoint converts to constants.
    """
    import keras
    import tensorflow as tf

    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT_NAME)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE,
        fn=lambda image: {OUTPUT_NAME: model(image, training=False)},
        input_signature=[spec],
    )
    archive.write_out(str(out_dir), verbose=False)
    return out_dir


def load_signature(path: Path):
    """The SavedModel's serving function, loaded by TensorFlow's own runtime (no Keras)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures[SIGNATURE]
    return loaded, lambda x: fn(**{INPUT_NAME: tf.constant(x, tf.float32)})[OUTPUT_NAME].numpy()
