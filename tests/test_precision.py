"""Training precision is a setting, and whatever it is, model.keras and every export are float32 models."""

import json

import numpy as np
import pytest

from export import bundle, tflite, verify
from pipeline import config as config_mod
from pipeline.runs.folder import load_model
from pipeline.training import train as train_mod
from tests.conftest import tiny_config, write_shapes_dataset


def test_precision_is_a_setting_float32_by_default():
    assert config_mod.RunConfig().train.precision == "float32"
    for value in ("mixed_float16", "mixed_bfloat16"):
        assert config_mod.from_dict({"train": {"precision": value}}).train.precision == value
    with pytest.raises(config_mod.ConfigError, match="train.precision='float16' is not allowed"):
        config_mod.from_dict({"train": {"precision": "float16"}})


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    # 48 images a class and 8 epochs: with 16 a class (3 steps an epoch) a from-scratch CNN's BatchNorm statistics
    # had not settled, and validation stayed at chance on some CPUs in either precision.
    data_dir = write_shapes_dataset(root / "shapes", per_class=48)
    cfg = tiny_config(
        model={"backbone": "small_cnn"},
        train={"strategy": "from_scratch", "head_epochs": 8, "learning_rate": 3e-3, "precision": "mixed_float16"},
        data={"test_fraction": 0.25},
    )
    return train_mod.train(str(data_dir), root / "run", cfg)


def test_mixed_float16_run_trains_in_float16_and_saves_a_float32_model(mixed_run):
    import keras

    start = next(
        json.loads(line) for line in mixed_run.metrics.read_text().splitlines() if json.loads(line)["event"] == "start"
    )
    assert start["precision"] == "mixed_float16" and start["backend"] == "tensorflow"
    assert keras.mixed_precision.global_policy().name == "float32"  # the process is back to float32
    model = load_model(mixed_run)
    policies = {layer.dtype_policy.name for layer in model.layers if hasattr(layer, "dtype_policy")}
    assert policies == {"float32"}, policies
    assert all(w.dtype == "float32" for w in model.weights)
    eval_result = json.loads(mixed_run.eval.read_text())
    assert eval_result["accuracy"] > 0.5  # it learned


def test_mixed_float16_run_exports_with_every_gate_and_no_float16_in_float32_files(mixed_run):
    dest, result = bundle.export_run(mixed_run.root, list(bundle.FORMATS))
    assert result["passed"], verify.table(result)
    for fmt in ("savedmodel", "tflite-float32", "tfjs"):
        assert result["formats"][fmt]["passed"], (fmt, result["formats"][fmt])
    interp = tflite.interpreter(verify.artifact_path(dest, "tflite-float32"))
    dtypes = {np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    assert "float16" not in dtypes, dtypes
    ops = tflite.op_names(verify.artifact_path(dest, "tflite-float32"))
    assert not any(op.startswith("Flex") for op in ops), ops
