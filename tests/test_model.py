import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.training import model as model_mod
from tests.conftest import tiny_config


def _build(**sections):
    import keras

    cfg = tiny_config(**sections)
    keras.utils.set_random_seed(0)
    return cfg, model_mod.build_models(cfg, 3)


def test_trainable_parameters_per_strategy():
    import keras

    def params(layers):
        return sum(int(np.prod(w.shape)) for layer in layers for w in layer.weights)

    def unfreezable(layers):  # BatchNorm stays frozen (inference mode) when fine-tuning
        return params([x for x in layers if not isinstance(x, keras.layers.BatchNormalization)])

    cfg, m = _build(train={"strategy": "feature_extraction"})
    head_params = (m.features.output_shape[-1] + 1) * 3
    base_all = sum(int(np.prod(w.shape)) for w in m.base.weights)
    base_trainable_all = sum(int(np.prod(w.shape)) for w in m.base.trainable_weights)

    model_mod.freeze_base(m)
    assert model_mod.trainable_count(m.train) == head_params
    assert model_mod.trainable_count(m.head) == head_params

    cfg, m = _build(train={"strategy": "fine_tune", "unfreeze_top": 0})
    model_mod.freeze_base(m)
    assert model_mod.trainable_count(m.train) == head_params
    assert model_mod.unfreeze_for_phase_two(m, cfg) == 0
    assert model_mod.trainable_count(m.train) == head_params + unfreezable(m.base.layers)
    assert unfreezable(m.base.layers) < base_trainable_all < base_all
    assert not any(x.trainable for x in m.base.layers if isinstance(x, keras.layers.BatchNormalization))

    cfg, m = _build(train={"strategy": "fine_tune", "unfreeze_top": 20})
    model_mod.unfreeze_for_phase_two(m, cfg)
    assert model_mod.trainable_count(m.train) == head_params + unfreezable(m.base.layers[-20:])

    cfg, m = _build(train={"strategy": "freeze_first_k", "freeze_first_k": 30})
    assert model_mod.unfreeze_for_phase_two(m, cfg) == 30
    assert model_mod.trainable_count(m.train) == head_params + unfreezable(m.base.layers[30:])

    cfg, m = _build(train={"strategy": "from_scratch"})
    model_mod.unfreeze_all(m)
    assert model_mod.trainable_count(m.train) == head_params + base_trainable_all  # BatchNorm trains too


def test_layer_counts_beyond_the_base_are_refused_with_the_field_name():
    cfg, m = _build(train={"strategy": "freeze_first_k", "freeze_first_k": 10_000})
    with pytest.raises(ConfigError, match=r"train.freeze_first_k=10000 .* has \d+ layers"):
        model_mod.unfreeze_for_phase_two(m, cfg)


# Random-init MobileNetV2 at 32 px gives exactly 1/3 for every class whatever the input, so a comparison of its
# outputs cannot fail; the small CNN (Rescaling, Conv, BatchNorm) gives outputs that depend on the image.
SMALL = {"model": {"backbone": "small_cnn", "weights": "none"}, "train": {"strategy": "from_scratch"}}


def _assert_outputs_depend_on_the_input(model, x):
    out = np.asarray(model(x))
    assert np.ptp(out, axis=0).max() > 1e-4, out  # otherwise the comparisons below could not fail


def test_training_and_inference_models_agree_and_inference_has_no_augmentation():
    cfg, m = _build(
        **SMALL,
        augment={
            "enabled": True,
            "flip": "horizontal",
            "rotation": 0.2,
            "zoom": 0.1,
            "translation": 0.1,
            "contrast": 0.2,
            "brightness": 0.2,
        },
    )
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    _assert_outputs_depend_on_the_input(m.inference, x)
    np.testing.assert_allclose(np.asarray(m.train(x, training=False)), np.asarray(m.inference(x)), atol=1e-6)
    augmented = np.asarray(m.train(x, training=True))
    assert not np.allclose(augmented, np.asarray(m.inference(x)), atol=1e-6)  # augmentation is really there

    def layer_types(model):
        out = set()
        for layer in model.layers:
            out.add(type(layer).__name__)
            if hasattr(layer, "layers") and layer is not m.base:
                out |= layer_types(layer)
        return out

    assert {"RandomFlip", "RandomRotation", "RandomContrast"} <= layer_types(m.train)
    assert not any(t.startswith("Random") for t in layer_types(m.inference))
    assert "Rescaling" in layer_types(m.inference)  # preprocessing lives inside the exported model


def test_head_model_shares_the_classifier_with_the_full_model():
    cfg, m = _build(**SMALL)
    x = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    _assert_outputs_depend_on_the_input(m.inference, x)
    feats = m.features.predict(x, verbose=0)
    np.testing.assert_allclose(m.head.predict(feats, verbose=0), m.inference.predict(x, verbose=0), atol=1e-5)
    dense = m.head.get_layer("predictions")
    dense.set_weights([w * 0 for w in dense.get_weights()])
    np.testing.assert_allclose(m.inference.predict(x, verbose=0), np.full((3, 3), 1 / 3), atol=1e-6)
