"""TFLite variants, builtin ops only (no Flex/Select TF ops, which most mobile apps cannot load)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.host.exitcodes import UserError


class ConversionError(UserError, RuntimeError):
    """A format could not be produced; the message says which and why."""


@dataclass(frozen=True)
class QuantizationConfig:
    """How one TFLite variant is quantized (after Model Maker's presets).

    Attributes:
        name: Format name, also the file stem.
        optimize: Apply ``tf.lite.Optimize.DEFAULT``.
        float16: Store weights as float16.
        full_integer: Integer-only ops with uint8 input and output (needs calibration data).
    """

    name: str
    optimize: bool = False
    float16: bool = False
    full_integer: bool = False

    @classmethod
    def float32(cls) -> QuantizationConfig:
        return cls("tflite-float32")

    @classmethod
    def for_float16(cls) -> QuantizationConfig:
        return cls("tflite-float16", optimize=True, float16=True)

    @classmethod
    def for_dynamic(cls) -> QuantizationConfig:
        return cls("tflite-dynamic", optimize=True)

    @classmethod
    def for_int8(cls) -> QuantizationConfig:
        return cls("tflite-int8", optimize=True, full_integer=True)


PRESETS = {
    q.name: q
    for q in (
        QuantizationConfig.float32(),
        QuantizationConfig.for_float16(),
        QuantizationConfig.for_dynamic(),
        QuantizationConfig.for_int8(),
    )
}


def convert(
    saved_model_dir: Path, q: QuantizationConfig, representative: Callable[[], Iterable[list[np.ndarray]]] | None = None
) -> bytes:
    """Converts the SavedModel to a TFLite flatbuffer with builtin ops only.

    Raises:
        ConversionError: the model needs ops outside the TFLite builtins.
    """
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if q.optimize:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if q.float16:
        conv.target_spec.supported_types = [tf.float16]
    if q.full_integer:
        if representative is None:
            raise ConversionError(f"{q.name} needs calibration images")
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
    try:
        return conv.convert()
    except Exception as exc:  # the converter raises ConverterError or plain exceptions
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"{q.name}: the model cannot be converted to TFLite with builtin ops only ({first}). "
            "Choose another backbone or leave this format out."
        ) from exc


def interpreter(path: Path):
    """A LiteRT interpreter (ai-edge-litert), allocated."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=2)
    interp.allocate_tensors()
    return interp


def io_details(path: Path) -> dict:
    """Input/output dtype, shape and quantization parameters, for the manifest."""
    interp = interpreter(path)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def describe(d):
        scale, zero = d["quantization"]
        return {
            "name": d["name"],
            "dtype": np.dtype(d["dtype"]).name,
            "shape": [int(x) for x in d["shape"]],
            "quantization": {"scale": float(scale), "zero_point": int(zero)},
        }

    return {"input": describe(inp), "output": describe(out)}


def op_names(path: Path) -> set[str]:
    """Every operator the flatbuffer uses (Flex ops show up as FlexXxx custom ops)."""
    interp = interpreter(path)
    return {op["op_name"] for op in interp._get_ops_details()}


def predict(interp, images: np.ndarray) -> np.ndarray:
    """Runs images one at a time (batch 1), converting to and from uint8 for the full-integer model."""
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for img in images:
        x = img[None]
        if inp["dtype"] == np.uint8:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale + zero), 0, 255).astype(np.uint8)
        else:
            x = x.astype(np.float32)
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(out["index"])[0]
        if out["dtype"] == np.uint8:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        results.append(y)
    return np.array(results)
