import dataclasses
import json

import pytest

from pipeline import config
from pipeline.config import ConfigError, RunConfig

REQUIRED_KEYS = [
    "model.backbone",
    "model.alpha",
    "model.image_size",
    "model.weights",
    "train.strategy",
    "train.head_epochs",
    "train.fine_tune_epochs",
    "train.batch_size",
    "train.learning_rate",
    "train.fine_tune_learning_rate",
    "train.seed",
    "augment.enabled",
    "data.val_fraction",
    "data.test_fraction",
]


def test_every_field_has_a_default_and_a_meaning():
    cfg = RunConfig()
    helps = config.field_help()
    for section, cls in config.SECTIONS.items():
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            assert helps.get(key), f"{key} has no one-line meaning in its Attributes docstring"
            assert getattr(getattr(cfg, section), f.name) is not None


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().train.seed = 3


@pytest.mark.parametrize(
    "override, value",
    [
        ("model.backbone=resnet50_v2", "resnet50_v2"),
        ("model.alpha=0.5", 0.5),
        ("model.image_size=160", 160),
        ("model.weights=none", "none"),
        ("train.strategy=feature_extraction", "feature_extraction"),
        ("train.head_epochs=7", 7),
        ("train.fine_tune_epochs=0", 0),
        ("train.batch_size=16", 16),
        ("train.learning_rate=0.01", 0.01),
        ("train.fine_tune_learning_rate=2e-5", 2e-5),
        ("train.seed=123", 123),
        ("augment.enabled=false", False),
        ("data.val_fraction=0.3", 0.3),
        ("data.test_fraction=0", 0.0),
    ],
)
def test_required_keys_work_with_set(override, value):
    key = override.split("=")[0]
    assert key in REQUIRED_KEYS
    cfg = config.apply_overrides(RunConfig(), [override])
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == value


@pytest.mark.parametrize(
    "backbone",
    [
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "mobilenet",
        "efficientnet_v2_b0",
        "resnet50_v2",
        "xception",
        "small_cnn",
    ],
)
def test_required_backbones_exist(backbone):
    overrides = [
        f"model.backbone={backbone}",
        "model.alpha=1.0" if backbone.startswith("mobilenet") else "model.alpha=0.35",
    ]
    if backbone == "small_cnn":
        overrides += ["model.weights=none", "train.strategy=from_scratch"]
    if backbone == "xception":
        overrides += ["model.image_size=299"]
    cfg = config.apply_overrides(RunConfig(), overrides)
    assert cfg.model.backbone == backbone
    import keras

    from pipeline import backbones

    spec = backbones.get(backbone)  # and it is built from Keras's own constructor (our own CNN aside)
    assert (backbone == "small_cnn") == (spec.constructor == "")
    assert backbone == "small_cnn" or callable(getattr(keras.applications, spec.constructor, None)), spec.constructor


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.strategy=transfer", ["train.strategy", "'transfer'", "fine_tune"]),
        ("data.val_fraction=1.5", ["data.val_fraction", "1.5", "(0.0, 1.0)"]),
        ("model.alpha=0.3", ["model.alpha", "0.3", "0.35"]),
        ("model.image_size=8", ["model.image_size", "8", "at least 32"]),
        ("train.batch_size=0", ["train.batch_size", "at least 1"]),
        ("train.batch_size=many", ["train.batch_size", "'many'", "whole number"]),
        ("augment.flip=diagonal", ["augment.flip", "horizontal"]),
        ("augment.enabled=maybe", ["augment.enabled", "true or false"]),
        ("train.lr_schedule=linear", ["train.lr_schedule", "cosine"]),
        ("model.weights=/no/such/file.h5", ["model.weights", "does not exist"]),
        ("model.colour=red", ["model.colour", "unknown config key"]),
        ("optimizer.lr=1", ["optimizer", "unknown config section"]),
        ("seed=1", ["section.key=value"]),
        ("train.learning_rate=nan", ["train.learning_rate", "nan", "finite"]),
        ("train.fine_tune_learning_rate=inf", ["train.fine_tune_learning_rate", "inf", "finite"]),
        ("augment.rotation=-inf", ["augment.rotation", "finite"]),
        ("train.label_smoothing=NaN", ["train.label_smoothing", "finite"]),
        ("train.head_epochs=inf", ["train.head_epochs", "whole number"]),
        ("train.deterministic=sometimes", ["train.deterministic", "true or false"]),
    ],
)
def test_invalid_values_name_the_field_and_what_is_allowed(override, words):
    with pytest.raises(ConfigError) as err:
        config.apply_overrides(RunConfig(), [override])
    for word in words:
        assert word in str(err.value)


def test_small_cnn_has_no_imagenet_weights():
    with pytest.raises(ConfigError, match="model.weights=none"):
        config.apply_overrides(RunConfig(), ["model.backbone=small_cnn"])


def test_fractions_must_leave_training_data():
    with pytest.raises(ConfigError, match="something is left to train on"):
        config.apply_overrides(RunConfig(), ["data.val_fraction=0.5", "data.test_fraction=0.45"])


def test_json_round_trip_and_toml(tmp_path):
    cfg = config.apply_overrides(
        RunConfig(), ["train.seed=9", "augment.rotation=0.2", "model.backbone=mobilenet", "model.alpha=0.25"]
    )
    path = tmp_path / "config.json"
    config.save(cfg, path)
    assert config.load(path) == cfg
    assert json.loads(path.read_text())["train"]["seed"] == 9

    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nstrategy = "feature_extraction"\nhead_epochs = 4\n[augment]\nenabled = false\n')
    loaded = config.load(toml)
    assert (loaded.train.strategy, loaded.train.head_epochs, loaded.augment.enabled) == ("feature_extraction", 4, False)
    assert loaded.model == RunConfig().model  # untouched sections keep their defaults


def test_broken_config_file_is_reported(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nseed = 1")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load(tmp_path / "missing.json")


def test_non_finite_numbers_are_refused_from_json_too(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"train": {"learning_rate": NaN}}')  # Python's json reads NaN
    with pytest.raises(ConfigError, match=r"train.learning_rate=nan is not allowed: must be a finite number"):
        config.load(path)


def test_a_config_file_that_is_not_utf8_is_reported(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("[train]\n# r\u00e9glages\nseed = 1\n".encode("latin-1"))
    with pytest.raises(
        ConfigError, match=r"latin1.toml is not UTF-8 text \(byte 0xe9 at position 11\); save it as UTF-8"
    ):
        config.load(path)


def test_warnings_for_legal_but_odd_choices():
    cfg = config.apply_overrides(RunConfig(), ["model.weights=none"])
    assert any("transfers nothing" in w for w in cfg.warnings())
    assert RunConfig().warnings() == []


def test_build_names_every_invalid_field_and_the_rules_across_fields_as_data():
    """The Train page's fields go through config.build: each invalid field with its reason (not parsed text)."""
    from pipeline import config

    cfg, errors = config.build({"train.batch_size": 0, "train.head_epochs": -1, "train.seed": 3})
    assert cfg is None and set(errors) == {"train.batch_size", "train.head_epochs"}
    assert errors["train.batch_size"].startswith("must be at least 1")
    cfg, errors = config.build({"data.val_fraction": 0.5, "data.test_fraction": 0.6})
    assert cfg is None and list(errors) == ["data.test_fraction"] and "0.5 + 0.6 = 1.1" in errors["data.test_fraction"]
    cfg, errors = config.build({"data.val_fraction": 1.5, "data.test_fraction": 0.6})  # the sum is not said twice
    assert list(errors) == ["data.val_fraction"]
    cfg, errors = config.build({"train.seed": 3, "model.image_size": 160})
    assert errors == {} and cfg.train.seed == 3 and cfg.model.image_size == 160
    # a field judged beside the form's other values: small_cnn is fine with no weights and from scratch
    cfg, errors = config.build(
        {"model.backbone": "small_cnn", "model.weights": "none", "train.strategy": "from_scratch", "train.seed": 0}
    )
    assert errors == {} and cfg.model.backbone == "small_cnn"
    cfg, errors = config.build({"model.backbone": "small_cnn"})  # with the default ImageNet weights: refused
    assert cfg is None and list(errors) == ["model.backbone"] and "no pretrained weights" in errors["model.backbone"]
    with pytest.raises(KeyError, match="train.sede is not a config field"):
        config.build({"train.sede": 3})


def test_the_keras_guide_preset_is_the_guides_recipe_and_comes_before_the_file_and_set(tmp_path):
    """--preset keras_guide: every head epoch through the base, fine-tuning at 1e-5, batches of 32 (what the defaults
    changed, issue 26); a config file and --set still override it; an unknown preset is refused by name."""
    from pipeline.training import presets

    guide = presets.config_for("somewhere", preset="keras_guide")
    assert (guide.augment.head_views, guide.train.fine_tune_learning_rate, guide.train.batch_size) == (0, 1e-5, 32)
    assert (RunConfig().augment.head_views, RunConfig().train.batch_size) == (2, 16)
    (tmp_path / "mine.toml").write_text("[train]\nbatch_size = 8\n")
    mine = presets.config_for(
        "somewhere", preset="keras_guide", config_file=str(tmp_path / "mine.toml"), overrides=["train.seed=3"]
    )
    assert (mine.augment.head_views, mine.train.batch_size, mine.train.seed) == (0, 8, 3)
    with pytest.raises(ConfigError, match="'keras' is not a preset; choose one of keras_guide"):
        presets.config_for("somewhere", preset="keras")
