import time

import numpy as np
import pytest

from pipeline import backbones
from pipeline.backbones import IMAGENET_MEAN, IMAGENET_STD, WeightsUnavailableError


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return np.asarray(x)


@pytest.mark.parametrize("name", backbones.names())
def test_in_model_preprocessing_maps_raw_0_and_255_to_the_expected_range(name):
    spec = backbones.get(name)
    raw = np.array([[[[0.0, 0.0, 0.0], [255.0, 255.0, 255.0]]]], dtype=np.float32)
    out = _apply(backbones.preprocessing_layers(spec), raw)[0, 0]
    if spec.input_range is not None:
        lo, hi = spec.input_range
        np.testing.assert_allclose(out[0], [lo] * 3, atol=1e-6)
        np.testing.assert_allclose(out[1], [hi] * 3, atol=1e-6)
    else:  # per-channel ImageNet normalisation
        mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
        np.testing.assert_allclose(out[0], -mean / std, atol=1e-5)
        np.testing.assert_allclose(out[1], (1 - mean) / std, atol=1e-5)


def test_expected_ranges_match_keras_applications_sources():
    expected = {
        "mobilenet_v2": (-1, 1), "mobilenet": (-1, 1), "resnet50_v2": (-1, 1), "xception": (-1, 1),
        "mobilenet_v3_small": (-1, 1), "mobilenet_v3_large": (-1, 1), "small_cnn": (0, 1),
    }
    for name, rng in expected.items():
        assert backbones.get(name).input_range == rng
    assert backbones.get("efficientnet_v2_b0").preprocessing == "imagenet_mean_std"


@pytest.mark.parametrize("name, keras_name", [("mobilenet_v3_small", "MobileNetV3Small"),
                                               ("efficientnet_v2_b0", "EfficientNetV2B0")])
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
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


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
