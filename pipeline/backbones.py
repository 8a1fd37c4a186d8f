"""Backbone registry: each entry carries its constructor and its input contract.

The contract is what makes exports correct: a model always takes raw RGB pixels in 0..255, and
the preprocessing each backbone expects is built as layers *inside* the model
(:func:`preprocessing_layers`). Ranges below were checked against each constructor's source in
keras 3.15 (``keras/src/applications``):

- MobileNet, MobileNetV2, ResNet50V2, Xception: ``preprocess_input(mode="tf")`` -> [-1, 1].
- MobileNetV3: its built-in ``include_preprocessing`` is ``Rescaling(1/127.5, offset=-1)`` -> [-1, 1].
  We switch the built-in off and add the same layer ourselves, so every backbone looks alike.
- EfficientNetV2-B*: built-in ``Rescaling(1/255)`` then ImageNet mean/std ``Normalization``;
  likewise rebuilt by us with the built-in switched off.
- small_cnn (ours): ``Rescaling(1/255)`` -> [0, 1].

This module imports TensorFlow only inside the functions that build layers.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.host.exitcodes import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights could not be loaded (typically: offline and not in the Keras cache)."""


@dataclass(frozen=True)
class BackboneSpec:
    """One supported architecture and the contract of its input.

    Attributes:
        name: Registry key, the value of ``model.backbone``.
        title: Human-readable name for the UI.
        constructor: ``keras.applications`` attribute name, or "" for our own small CNN.
        default_size: Input size the pretrained weights were trained at.
        min_size: Smallest input size the architecture accepts.
        weight_sizes: Sizes with their own ImageNet weights file (other sizes reuse the default one).
        alphas: Width multipliers with ImageNet weights ("" when the backbone has none).
        has_imagenet: Whether ImageNet weights exist for it.
        preprocessing: "minus_one_one", "imagenet_mean_std" or "zero_one": the range the base expects.
        builtin_preprocessing: Whether the constructor has its own ``include_preprocessing`` switch.
        params_millions: Rough parameter count at alpha 1.0, for the UI.
    """

    name: str
    title: str
    constructor: str
    default_size: int
    min_size: int
    weight_sizes: tuple[int, ...] = ()
    alphas: tuple[float, ...] = ()
    has_imagenet: bool = True
    preprocessing: str = "minus_one_one"
    builtin_preprocessing: bool = False
    params_millions: float = 0.0

    @property
    def input_range(self) -> tuple[float, float] | None:
        """(low, high) the base expects after preprocessing; None for per-channel normalisation."""
        return {"minus_one_one": (-1.0, 1.0), "zero_one": (0.0, 1.0)}.get(self.preprocessing)


_SPECS = (
    BackboneSpec(
        "mobilenet_v2",
        "MobileNetV2",
        "MobileNetV2",
        224,
        32,
        (96, 128, 160, 192, 224),
        (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
        params_millions=2.3,
    ),
    BackboneSpec(
        "mobilenet_v3_small",
        "MobileNetV3 Small",
        "MobileNetV3Small",
        224,
        32,
        (224,),
        (0.75, 1.0),
        builtin_preprocessing=True,
        params_millions=0.9,
    ),
    BackboneSpec(
        "mobilenet_v3_large",
        "MobileNetV3 Large",
        "MobileNetV3Large",
        224,
        32,
        (224,),
        (0.75, 1.0),
        builtin_preprocessing=True,
        params_millions=3.0,
    ),
    BackboneSpec(
        "mobilenet",
        "MobileNet (v1)",
        "MobileNet",
        224,
        32,
        (128, 160, 192, 224),
        (0.25, 0.5, 0.75, 1.0),
        params_millions=3.2,
    ),
    BackboneSpec(
        "efficientnet_v2_b0",
        "EfficientNetV2-B0",
        "EfficientNetV2B0",
        224,
        32,
        (224,),
        preprocessing="imagenet_mean_std",
        builtin_preprocessing=True,
        params_millions=5.9,
    ),
    BackboneSpec("resnet50_v2", "ResNet50V2", "ResNet50V2", 224, 32, (224,), params_millions=23.6),
    BackboneSpec("xception", "Xception", "Xception", 299, 71, (299,), params_millions=20.9),
    BackboneSpec(
        "small_cnn",
        "Small CNN (from scratch)",
        "",
        32,
        8,
        (),
        (),
        has_imagenet=False,
        preprocessing="zero_one",
        params_millions=0.1,
    ),
)
_REGISTRY = {spec.name: spec for spec in _SPECS}


def names() -> tuple[str, ...]:
    """All registry keys, in display order."""
    return tuple(_REGISTRY)


def get(name: str) -> BackboneSpec:
    """Returns the spec for ``name``.

    Raises:
        KeyError: naming the known backbones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def preprocessing_layers(spec: BackboneSpec) -> list[Any]:
    """Layers that map raw 0..255 RGB pixels to the range ``spec``'s base expects."""
    import keras

    if spec.preprocessing == "minus_one_one":
        return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess_rescale")]
    if spec.preprocessing == "zero_one":
        return [keras.layers.Rescaling(1.0 / 255.0, name="preprocess_rescale")]
    if spec.preprocessing == "imagenet_mean_std":
        return [
            keras.layers.Rescaling(1.0 / 255.0, name="preprocess_rescale"),
            keras.layers.Normalization(
                mean=list(IMAGENET_MEAN),
                variance=[s * s for s in IMAGENET_STD],
                axis=-1,
                name="preprocess_normalize",
            ),
        ]
    raise AssertionError(f"unknown preprocessing {spec.preprocessing}")


def keras_cache_dir() -> Path:
    """Where Keras looks for (and downloads) application weights.

    Keras reads ``KERAS_HOME`` once, when it is imported; once it is, its own answer wins.
    """
    import sys

    if "keras" in sys.modules:
        from keras.src.backend import config as keras_config

        return Path(keras_config.keras_home()) / "models"
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def build_base(spec: BackboneSpec, image_size: int, alpha: float, weights: str, *, download_timeout: float = 20.0):
    """Builds the backbone without its classifier top, taking preprocessed input.

    Args:
        spec: The registry entry.
        image_size: Square input size.
        alpha: Width multiplier (only used where ``spec.alphas`` is set).
        weights: "imagenet", "none" or a path to a weights file.
        download_timeout: Seconds a weights download may stall before it is given up.

    Raises:
        WeightsUnavailableError: the weights could not be fetched or read; the message names the
            file Keras wanted, where to put it, and the ``model.weights=none`` way out.
    """
    import keras

    shape = (image_size, image_size, 3)
    if not spec.constructor:
        return _small_cnn(shape)
    kwargs: dict[str, Any] = {"include_top": False, "input_shape": shape}
    kwargs["weights"] = None if weights == "none" else weights
    if spec.alphas:
        kwargs["alpha"] = alpha
    if spec.builtin_preprocessing:
        kwargs["include_preprocessing"] = False
    constructor = getattr(keras.applications, spec.constructor)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(download_timeout)
    try:
        return constructor(**kwargs)
    except Exception as exc:  # Keras raises a bare Exception for a failed download
        if weights == "none":
            raise
        raise WeightsUnavailableError(_weights_message(spec, weights, exc)) from exc
    finally:
        socket.setdefaulttimeout(previous)


def _weights_message(spec: BackboneSpec, weights: str, exc: Exception) -> str:
    text = str(exc)
    if weights != "imagenet":
        return (
            f"could not load weights file {weights} into {spec.name}: {text.splitlines()[0] if text else exc!r}. "
            "Check that the file was saved from the same architecture, or use model.weights=imagenet or none."
        )
    url = re.search(r"https?://\S+?\.h5", text)
    file_name = url.group(0).rsplit("/", 1)[-1] if url else "(see the message below)"
    where = keras_cache_dir()
    return (
        f"the ImageNet weights for {spec.name} could not be downloaded (no network?). "
        f"Keras wanted the file {file_name}"
        + (f" from {url.group(0)}" if url else "")
        + f". Copy that file into {where} (or set KERAS_HOME to a folder whose models/ holds it), "
        "or train without pretrained weights with model.weights=none and train.strategy=from_scratch. "
        f"Details: {text.splitlines()[0] if text else type(exc).__name__}"
    )


def _small_cnn(shape: tuple[int, int, int]):
    """A from-scratch CNN in the style of the MNIST codelab: conv, batch norm, ReLU (dropout is in the head)."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=shape, name="small_cnn_input")
    x = inputs
    for i, (filters, stride) in enumerate(((32, 1), (32, 2), (64, 1), (64, 2), (128, 1))):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)  # short runs: stats settle fast
        x = layers.ReLU(name=f"relu{i}")(x)
    return keras.Model(inputs, x, name="small_cnn")
