import time

import numpy as np
import pytest

from pipeline import backbones
from pipeline.backbones import IMAGENET_MEAN, IMAGENET_STD, WeightsUnavailableError


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return np.asarray(x)


# The keras.applications module whose preprocess_input belongs to each constructor in the registry.
KERAS_FAMILY = {
    "MobileNetV2": "mobilenet_v2",
    "MobileNet": "mobilenet",
    "ResNet50V2": "resnet_v2",
    "Xception": "xception",
    "MobileNetV3Small": "mobilenet_v3",
    "MobileNetV3Large": "mobilenet_v3",
    "EfficientNetV2B0": "efficientnet_v2",
}


def _pixels():
    """Raw RGB pixels 0..255, the extremes included, as a user's image reaches the model."""
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    x[0, 0, 0], x[0, 0, 1] = 0.0, 255.0
    return x


def _keras_preprocessing(spec, x):
    """What Keras itself does to raw pixels for ``spec``'s family.

    For families whose ``preprocess_input`` is a pass-through because the constructor preprocesses inside the
    model (MobileNetV3, EfficientNetV2), that constructor's own leading preprocessing layers
    (``include_preprocessing=True``) applied to the same pixels.
    """
    import importlib

    import keras

    family = importlib.import_module(f"keras.applications.{KERAS_FAMILY[spec.constructor]}")
    out = np.asarray(family.preprocess_input(x.copy()))
    if not spec.builtin_preprocessing:
        return out
    np.testing.assert_array_equal(out, x)  # Keras says: the model preprocesses; make sure it still does nothing
    kwargs = {"include_top": False, "weights": None, "input_shape": (32, 32, 3), "include_preprocessing": True}
    model = getattr(keras.applications, spec.constructor)(**kwargs)
    layers = []
    for layer in model.layers[1:]:  # after the InputLayer, up to the first layer that is not preprocessing
        if not isinstance(layer, keras.layers.Rescaling | keras.layers.Normalization):
            break
        layers.append(layer)
    assert layers, f"{spec.constructor}(include_preprocessing=True) has no preprocessing layers at its bottom"
    return _apply(layers, x)


@pytest.mark.parametrize("name", backbones.names())
def test_in_model_preprocessing_equals_keras_preprocess_input_for_the_family(name):
    spec = backbones.get(name)
    x = _pixels()
    ours = _apply(backbones.preprocessing_layers(spec), x)
    if not spec.constructor:  # our own small CNN: no Keras family; its contract is pixels / 255
        np.testing.assert_allclose(ours, x / 255.0, rtol=1e-6, atol=1e-6)
        return
    assert spec.constructor in KERAS_FAMILY, f"add {spec.constructor}'s keras.applications module to KERAS_FAMILY"
    np.testing.assert_allclose(ours, _keras_preprocessing(spec, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in backbones.names() if backbones.get(n).constructor])
def test_declared_input_range_is_what_keras_preprocessing_gives_for_0_and_255(name):
    """The range the registry declares (shown by `python -m pipeline backbones`, written to the manifest) is
    read off Keras's own preprocessing of black and white, not from a table of our own."""
    spec = backbones.get(name)
    raw = np.zeros((1, 32, 32, 3), np.float32)
    raw[0, 0, 1] = 255.0
    out = _keras_preprocessing(spec, raw)[0, 0]
    if spec.input_range is not None:
        np.testing.assert_allclose(out[:2], [[spec.input_range[0]] * 3, [spec.input_range[1]] * 3], atol=1e-6)
    else:  # per-channel ImageNet mean/std: black and white land on (0 - mean) / std and (1 - mean) / std
        mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
        np.testing.assert_allclose(out[:2], [-mean / std, (1 - mean) / std], atol=1e-5)
        assert spec.preprocessing == "imagenet_mean_std"


@pytest.mark.parametrize(
    "name, keras_name",
    [
        ("mobilenet_v3_small", "MobileNetV3Small"),
        ("mobilenet_v3_large", "MobileNetV3Large"),
        ("efficientnet_v2_b0", "EfficientNetV2B0"),
    ],
)
def test_our_preprocessing_equals_the_constructors_builtin_one(name, keras_name):
    """Where Keras has include_preprocessing, ours (built-in off + our layers) gives the same output."""
    import keras

    spec = backbones.get(name)
    kwargs = {"include_top": False, "weights": None, "input_shape": (32, 32, 3)}
    if spec.alphas:
        kwargs["alpha"] = 1.0
    keras.utils.set_random_seed(0)
    builtin = getattr(keras.applications, keras_name)(include_preprocessing=True, **kwargs)
    ours = backbones.build_base(spec, 32, 1.0, "none")
    by_name = {layer.name: layer for layer in builtin.layers}
    copied = 0
    for layer in ours.layers:
        if layer.weights and layer.name in by_name:
            layer.set_weights(by_name[layer.name].get_weights())
            copied += 1
    assert copied > 10
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(builtin(x, training=False))
    got = np.asarray(ours(_apply(backbones.preprocessing_layers(spec), x), training=False))
    # Random-init outputs are tiny (about 1e-11 for MobileNetV3): a fixed atol of 1e-4 let anything pass, so
    # the tolerance is relative to the outputs' own scale.
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


def test_offline_imagenet_weights_fail_fast_with_a_way_forward():
    """96 px MobileNetV2 has its own weights file, which cannot be downloaded here: the user's offline case."""
    spec = backbones.get("mobilenet_v2")
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        backbones.build_base(spec, 96, 0.35, "imagenet", download_timeout=10)
    message = str(err.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5" in message
    assert str(backbones.keras_cache_dir()) in message
    assert "model.weights=none" in message
    assert time.monotonic() - t0 < 60


def test_a_weights_file_path_loads_into_the_base(tmp_path):
    spec = backbones.get("mobilenet_v2")
    first = backbones.build_base(spec, 32, 0.35, "none")
    path = tmp_path / "base.weights.h5"
    first.save_weights(path)
    second = backbones.build_base(spec, 32, 0.35, str(path))
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(WeightsUnavailableError, match="could not load weights file"):
        backbones.build_base(spec, 32, 0.35, str(tmp_path / "junk.h5"))


@pytest.mark.slow
@pytest.mark.parametrize("name, alpha", [("mobilenet_v2", 0.35), ("mobilenet_v2", 0.5), ("mobilenet", 0.25)])
def test_real_imagenet_weights_load_through_the_keras_cache(keras_home_with_weights, name, alpha):
    base = backbones.build_base(backbones.get(name), 224, alpha, "imagenet")
    assert base.count_params() > 100_000
    # a real ImageNet kernel is not what random init gives: first conv weights have clear structure
    kernel = base.layers[1].get_weights()[0] if base.layers[1].get_weights() else base.layers[2].get_weights()[0]
    assert np.abs(kernel).max() > 0.5
