"""Real training on tiny data: the transfer recipe's invariants, resume, cancel, determinism, accuracy."""

import json
import os
import signal
import time

import numpy as np
import pytest

from pipeline import config as config_mod
from pipeline import data as data_mod
from pipeline.runs.folder import CheckpointMismatchError, RunFolder, RunNotReadyError, load_variables, read_variables
from pipeline.training import model as model_mod
from pipeline.training import train as train_mod
from pipeline.training.callbacks import EpochCommit, FeatureValidation, checkpoint_variables
from pipeline.training.evaluate import evaluate
from pipeline.training.optimizer import fused_adam_class
from pipeline.training.placement import place
from tests.conftest import pipeline_cli, tiny_config, write_shapes_dataset


def _initial_models(cfg, num_classes=3):
    """The models exactly as train() builds them before any step (same seed)."""
    import keras

    keras.utils.set_random_seed(cfg.train.seed)
    return model_mod.build_models(cfg, num_classes)


def _base_weights(models):
    return {w.path: np.array(w) for w in models.base.weights}


def _load_inference(path, models):
    """A finished phase's file holds the whole training model; the inference model's variables are among them."""
    values, _ = read_variables(path)
    for key, variable in checkpoint_variables(models.inference).items():
        variable.assign(values[key])


def test_feature_extraction_uses_cached_features_and_leaves_the_base_untouched(shapes_dir, tmp_path):
    cfg = tiny_config(train={"strategy": "feature_extraction", "head_epochs": 3})
    run = train_mod.train(str(shapes_dir), tmp_path / "run", cfg, evaluate_after=False)

    lines = run.metrics_lines()
    phase = next(x for x in lines if x["event"] == "phase")
    assert phase["cached_features"] is True and phase["phase"] == "head"
    assert any(x["event"] == "features" for x in lines)
    epochs = run.epochs()
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for key in ("phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second"):
        assert key in epochs[0]

    before = _initial_models(cfg)
    after = _initial_models(cfg)
    _load_inference(run.phase_done_weights("head"), after)
    for path, value in _base_weights(before).items():
        np.testing.assert_allclose(_base_weights(after)[path], value, err_msg=path)
    dense_before = before.inference.get_layer("predictions").get_weights()[0]
    dense_after = after.inference.get_layer("predictions").get_weights()[0]
    assert not np.allclose(dense_before, dense_after)  # the head did learn
    assert run.model.exists() and json.loads(run.state.read_text())["status"] == "done"


def test_head_views_train_the_head_on_features_of_each_view_computed_once(shapes_dir, tmp_path):
    """augment.head_views=2 with augmentation on: the base sees every training image twice (as it is, and one
    augmented copy) before the head's first epoch; the augmented view is the same whenever it is computed (a
    resumed run's features equal an uninterrupted run's) and is not the plain one."""
    cfg = tiny_config(
        train={"strategy": "feature_extraction", "head_epochs": 3},
        augment={"enabled": True, "flip": "horizontal", "rotation": 0.1, "head_views": 2},
    )
    run = train_mod.train(str(shapes_dir), tmp_path / "run", cfg, evaluate_after=False)
    lines = run.metrics_lines()
    splits = run.splits()
    features = next(x for x in lines if x["event"] == "features")
    assert features["views"] == 2 and features["images"] == 2 * len(splits.train) + len(splits.val)
    assert next(x for x in lines if x["event"] == "phase")["cached_features"] is True
    assert [e["epoch"] for e in run.epochs()] == [1, 2, 3]

    models = _initial_models(cfg)
    images = np.stack([data_mod.load_image(f, 32) for f in splits.paths("train")[:8]]).astype(np.float32)
    plain = models.features.predict(images, verbose=0)
    first, again = (train_mod._augmented(models, cfg, 1).predict(images, verbose=0) for _ in range(2))
    assert np.array_equal(first, again)
    assert np.abs(first - plain).max() > 0.1 * np.abs(plain).max()  # (a random-init base's features are ~1e-11)


def test_a_run_folder_saved_before_head_views_resumes_as_it_trained(tmp_path):
    """A config.json written before augment.head_views existed reads as head_views=0 (every head epoch through the
    base, as that run trained); a new config and a config file of the user's get the default."""
    saved = json.loads(config_mod.RunConfig().to_json())
    del saved["augment"]["head_views"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert config_mod.load(tmp_path / "config.json").augment.head_views == 0
    (tmp_path / "mine.json").write_text(json.dumps(saved))
    assert config_mod.load(tmp_path / "mine.json").augment.head_views == config_mod.AugmentConfig().head_views


def test_fine_tune_freezes_base_then_unfreezes_with_batchnorm_in_inference_mode(shapes_dir, tmp_path):
    cfg = tiny_config(
        train={"strategy": "fine_tune", "head_epochs": 1, "fine_tune_epochs": 2},
        augment={"enabled": True, "flip": "horizontal", "rotation": 0.05, "head_views": 0},
    )
    run = train_mod.train(str(shapes_dir), tmp_path / "run", cfg, evaluate_after=False)
    phases = [x for x in run.metrics_lines() if x["event"] == "phase"]
    assert [p["phase"] for p in phases] == ["head", "fine_tune"]
    assert phases[0]["cached_features"] is False  # augment.head_views=0: the base augments every head epoch
    assert phases[1]["trainable_params"] > phases[0]["trainable_params"]
    assert [e["lr"] for e in run.epochs() if e["phase"] == "fine_tune"] == [pytest.approx(1e-3)] * 2

    initial = _base_weights(_initial_models(cfg))
    after_head = _initial_models(cfg)
    _load_inference(run.phase_done_weights("head"), after_head)
    for path, value in _base_weights(after_head).items():
        np.testing.assert_allclose(value, initial[path], err_msg=f"{path} changed while the base was frozen")

    after_ft = _initial_models(cfg)
    _load_inference(run.phase_done_weights("fine_tune"), after_ft)
    tuned = _base_weights(after_ft)
    moving = [p for p in tuned if "moving_mean" in p or "moving_variance" in p]
    kernels = [p for p in tuned if p.endswith("kernel")]
    assert moving and kernels
    for path in moving:
        np.testing.assert_allclose(tuned[path], initial[path], err_msg=f"{path} moved during fine-tuning")
    # random-init layers deep in the base barely get gradient (ReLU6 saturates); the top ones do
    changed = [p for p in kernels if not np.allclose(tuned[p], initial[p])]
    assert len(changed) >= 3, changed  # (the slow real-weights test checks that nearly all of them move)


def test_same_seed_gives_the_same_metrics(shapes_dir, tmp_path):
    cfg = tiny_config(
        train={"strategy": "fine_tune", "head_epochs": 2, "fine_tune_epochs": 1},
        augment={"enabled": True, "flip": "horizontal"},
    )
    runs = [train_mod.train(str(shapes_dir), tmp_path / f"run{i}", cfg, evaluate_after=False) for i in range(2)]
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    a, b = ([[e[k] for k in keys] for e in r.epochs()] for r in runs)
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_evaluation_writes_a_complete_eval_json(shapes_dir, tmp_path):
    cfg = tiny_config(train={"strategy": "from_scratch", "head_epochs": 2}, data={"test_fraction": 0.25})
    run = train_mod.train(str(shapes_dir), tmp_path / "run", cfg)
    result = json.loads(run.eval.read_text())
    assert result["split"] == "test" and result["labels"] == ["bar", "disc", "square"]
    assert np.array(result["confusion_matrix"]).sum() == result["images"] == 9
    assert set(result["per_class"]["disc"]) == {"precision", "recall", "f1", "support"}
    correct = np.trace(np.array(result["confusion_matrix"]))
    assert result["accuracy"] == pytest.approx(correct / 9)
    probs = [m["probability"] for m in result["mistakes"]]
    assert probs == sorted(probs, reverse=True) and len(probs) == 9 - correct
    for m in result["mistakes"]:
        assert os.path.exists(m["file"]) and m["true"] != m["predicted"]
    # every image's prediction, each confusion cell's images most confident first, the confused pairs
    from pipeline.training.evaluate import cell

    assert len(result["predictions"]) == 9 and not result["split_chose_checkpoint"]
    matrix = np.array(result["confusion_matrix"])
    for t, true in enumerate(result["labels"]):
        for p, predicted in enumerate(result["labels"]):
            rows = cell(result, true, predicted)
            assert len(rows) == matrix[t, p]
            assert [r["probability"] for r in rows] == sorted((r["probability"] for r in rows), reverse=True)
    pairs = [(x["true"], x["predicted"], x["images"]) for x in result["confused_pairs"]]
    assert sum(n for *_, n in pairs) == 9 - correct and [n for *_, n in pairs] == sorted(
        (n for *_, n in pairs), reverse=True
    )

    # streamed in batches of 8 (the last one holds 1 image): the same probabilities as one predict over the split
    from pipeline.runs.folder import load_model
    from pipeline.training.evaluate import predict_split

    out = predict_split(run.root)
    images = np.stack([data_mod.load_image(f, cfg.model.image_size) for f in out["files"]]).astype(np.float32)
    np.testing.assert_allclose(out["probs"], load_model(run).predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    assert json.loads(run.state.read_text())["status"] == "done"

    # `pipeline evaluate` completes a run whose evaluation was interrupted
    run.write_state(run.read_state().copy(status="evaluating"))
    evaluate(run.root)
    assert json.loads(run.state.read_text())["status"] == "done"


def test_evaluate_needs_a_finished_run(tmp_path):
    with pytest.raises(RunNotReadyError, match="does not exist"):
        evaluate(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text(config_mod.RunConfig().to_json())
    with pytest.raises(RunNotReadyError, match="no dataset.json"):
        evaluate(tmp_path / "half")


def test_a_run_folder_refuses_a_different_config(shapes_dir, tmp_path):
    cfg = tiny_config(train={"strategy": "feature_extraction", "head_epochs": 1})
    train_mod.train(str(shapes_dir), tmp_path / "run", cfg, evaluate_after=False)
    with pytest.raises(train_mod.RunFolderError, match="finished run"):
        train_mod.train(str(shapes_dir), tmp_path / "run", cfg)
    with pytest.raises(train_mod.RunFolderError, match="different configuration"):
        train_mod.train(str(shapes_dir), tmp_path / "run", tiny_config(train={"seed": 5}))


def test_sample_set_trains_to_95_percent_with_its_defaults(tmp_path):
    """The embedded sample with its preset (small CNN, from scratch): a learnable task, measured on test."""
    from pipeline.training.presets import config_for

    cfg = config_for("sample:digits")
    run = train_mod.train("sample:digits", tmp_path / "run", cfg)
    result = json.loads(run.eval.read_text())
    assert result["split"] == "test"
    assert result["accuracy"] >= 0.95, result["accuracy"]
    assert max(e["val_accuracy"] for e in run.epochs()) >= 0.95


# === Processes: kill, resume, cancel (the CLI as a user runs it) ===


def _wait_for_epochs(run: RunFolder, n: int, proc, timeout=300):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if len(run.epochs()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no epoch line in time")


SLOW_SETS = [
    "--set",
    "model.image_size=64",
    "--set",
    "train.head_epochs=3",
    "--set",
    "train.fine_tune_epochs=4",
    "--set",
    "model.weights=none",
    "--set",
    "augment.enabled=true",
    "--set",
    "train.batch_size=8",
    "--set",
    "train.early_stopping_patience=0",
    "--set",
    "data.test_fraction=0",
]


def test_a_killed_training_resumes_at_its_last_finished_epoch(tmp_path):
    data_dir = write_shapes_dataset(tmp_path / "shapes", per_class=20, size=64)
    run = RunFolder(tmp_path / "run")
    proc = pipeline_cli("train", str(data_dir), "--run-dir", str(run.root), *SLOW_SETS)
    _wait_for_epochs(run, 4, proc)  # the head phase (3) is done, and fine-tune epoch 1 too
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = [(e["phase"], e["epoch"]) for e in run.epochs()]
    assert ("head", 3) in killed and len(killed) < 7

    proc = pipeline_cli("train", str(data_dir), "--run-dir", str(run.root), *SLOW_SETS)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "resuming" in err
    done = [(e["phase"], e["epoch"]) for e in run.epochs()]
    assert done[: len(killed)] == killed
    resumed = done[len(killed) :]
    assert ("head", 1) not in resumed  # the finished head phase was not repeated
    assert len(set(done)) == len(done)  # no finished epoch ran twice
    assert done[-1] == ("fine_tune", 4) and len(done) == 7
    assert run.eval.exists() and "accuracy on val" in out


def test_sigterm_cancels_at_the_next_batch_keeping_the_checkpoint(tmp_path):
    data_dir = write_shapes_dataset(tmp_path / "shapes", per_class=20, size=64)
    run = RunFolder(tmp_path / "run")
    proc = pipeline_cli("train", str(data_dir), "--run-dir", str(run.root), *SLOW_SETS)
    _wait_for_epochs(run, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "cancelled" in err and "resume" in err
    assert json.loads(run.state.read_text())["status"] == "cancelled"
    assert run.backup_dir("head").exists() or run.phase_done_weights("head").exists()
    finished = len(run.epochs())
    assert finished < 7

    run.cancel_file.touch()  # a cancel file stops it too, right away
    proc = pipeline_cli("train", str(data_dir), "--run-dir", str(run.root), *SLOW_SETS)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3 and len(run.epochs()) == finished
    run.cancel_file.unlink()


def test_cli_reports_bad_input_in_one_line(tmp_path, shapes_dir):
    proc = pipeline_cli("train", str(shapes_dir), "--run-dir", str(tmp_path / "r"), "--set", "train.strategy=magic")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].startswith("error: train.strategy='magic' is not allowed")
    assert "Traceback" not in err

    (shapes_dir / "bar" / "oops.jpg").write_bytes(b"\x00" * 50)
    proc = pipeline_cli("scan", str(shapes_dir))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "bar/oops.jpg: not an image" in out

    proc = pipeline_cli("evaluate", str(tmp_path / "nothing"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "is not a run folder" in err and "Traceback" not in err


def test_offline_weights_message_from_the_cli(tmp_path, shapes_dir):
    proc = pipeline_cli("train", str(shapes_dir), "--run-dir", str(tmp_path / "r"), "--set", "model.image_size=96")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5" in last and "model.weights=none" in last


# === Real photos, real weights (slow; CI runs them) ===


@pytest.mark.slow
def test_hymenoptera_fine_tune_reaches_088(shared_dir, keras_home_with_weights, tmp_path):
    cfg = config_mod.apply_overrides(config_mod.RunConfig(), ["train.head_epochs=3", "train.fine_tune_epochs=2"])
    assert (cfg.model.backbone, cfg.model.alpha, cfg.model.image_size, cfg.train.strategy) == (
        "mobilenet_v2",
        0.35,
        224,
        "fine_tune",
    )
    run = train_mod.train(str(shared_dir / "data" / "hymenoptera"), tmp_path / "run", cfg)
    result = json.loads(run.eval.read_text())
    assert result["split"] == "val" and result["images"] == 153
    assert result["accuracy"] >= 0.88, result["accuracy"]

    # with real ImageNet weights: fine-tuning moved the kernels but none of the BatchNorm statistics
    pristine = _base_weights(_initial_models(cfg, 2))
    tuned = _initial_models(cfg, 2)
    _load_inference(run.phase_done_weights("fine_tune"), tuned)
    tuned = _base_weights(tuned)
    moving = [p for p in tuned if "moving_" in p]
    kernels = [p for p in tuned if p.endswith("kernel")]
    assert moving and kernels  # (an empty list would check nothing)
    for path in moving:
        np.testing.assert_array_equal(tuned[path], pristine[path], err_msg=path)
    assert sum(not np.allclose(tuned[p], pristine[p]) for p in kernels) > 0.9 * len(kernels)


@pytest.mark.slow
def test_flowers_scan_reports_the_cross_class_duplicates(shared_dir):
    from collections import defaultdict

    by_digest = defaultdict(list)
    for line in (shared_dir / "data" / "flowers5.sha256").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        by_digest[digest].append(name.removeprefix("./"))
    groups = [g for g in by_digest.values() if len(g) > 1]
    cross = {p for g in groups if len({x.split("/")[0] for x in g}) > 1 for p in g}
    within = {p for g in groups if len({x.split("/")[0] for x in g}) == 1 for p in sorted(g)[1:]}
    assert cross and within

    report = data_mod.scan(shared_dir / "data" / "flowers5")
    assert len(report.classes) == 5
    assert {s["path"] for s in report.conflicts()} == cross
    assert {s["path"] for s in report.duplicates()} == within
    assert report.total() == sum(len(g) for g in by_digest.values()) - len(cross) - len(within)


def _tiny_fit_model(names=("hidden", "out"), width=8):
    import keras

    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(width, activation="relu", name=names[0]),
            keras.layers.Dense(2, name=names[1]),
        ],
        name="tiny",
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["accuracy"])
    return model


def _commit(run, model, phase="scratch", epochs=3):
    from pipeline.runs.ledger import Ledger

    state = Ledger.from_dict({"phases": {phase: {"epochs_done": 0, "steps_done": 0, "done": False}}})
    return state, EpochCommit(
        run, state, phase, epochs, inference=model, n_images=64, epoch_offset=0, patience=0, emit=lambda record: None
    )


def test_epoch_commit_then_resume_restores_weights_optimizer_state_and_steps(tmp_path):
    """The commit writes the checkpoint and state.json; a new model restored from them continues where it was,
    the epoch given to fit explicitly (no private Keras attribute)."""
    import keras

    from pipeline.runs.ledger import Ledger

    run = RunFolder(tmp_path / "run")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)), rng.normal(size=(64, 2))
    keras.utils.set_random_seed(0)
    first = _tiny_fit_model()
    state, commit = _commit(run, first)
    first.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_data=(x, y), callbacks=[commit])
    saved = json.loads(run.state.read_text())
    assert saved["phases"]["scratch"]["epochs_done"] == 2 and saved["phases"]["scratch"]["steps_done"] == 2 * 4
    assert sorted(p.name for p in run.backup_dir("scratch").iterdir()) == ["epoch-0001.npz", "epoch-0002.npz"]

    keras.utils.set_random_seed(1)  # different initial weights: all state must come from the file
    second = _tiny_fit_model()
    second.optimizer.build(second.trainable_variables)
    meta = load_variables(run.epoch_checkpoint("scratch", 2), checkpoint_variables(second, second.optimizer))
    assert meta == {"epoch": 2, "steps": 8} and int(second.optimizer.iterations) == 8
    for a, b in zip(second.weights, first.weights, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    _, commit = _commit(run, second)
    commit.state = Ledger.from_dict(saved)  # the ledger a resumed run reads
    history = second.fit(
        x, y, batch_size=16, epochs=3, initial_epoch=2, verbose=0, validation_data=(x, y), callbacks=[commit]
    )
    assert history.epoch == [2]  # only the third epoch ran
    assert int(second.optimizer.iterations) == 12
    assert sorted(p.name for p in run.backup_dir("scratch").iterdir()) == ["epoch-0002.npz", "epoch-0003.npz"]


def test_a_checkpoint_of_another_model_is_refused_with_a_message(tmp_path):
    path = tmp_path / "c.npz"
    model = _tiny_fit_model()
    from pipeline.runs.folder import save_variables

    save_variables(path, checkpoint_variables(model))
    with pytest.raises(CheckpointMismatchError, match="does not match this model.*hidden/kernel"):
        load_variables(path, checkpoint_variables(_tiny_fit_model(width=5)))  # a changed layer
    assert issubclass(CheckpointMismatchError, train_mod.RunFolderError)


def test_checkpoints_are_keyed_by_variable_path_not_position(tmp_path):
    """Renamed layers of the same shapes would load silently wrong by position; by path they are refused.
    Layers listed in another order load by name into the right variables."""
    import keras

    from pipeline.runs.folder import save_variables

    def square(names):
        return keras.Sequential([keras.Input((4,)), *(keras.layers.Dense(4, name=n) for n in names)], name="sq")

    source = square(["first", "second"])
    path = tmp_path / "c.npz"
    save_variables(path, checkpoint_variables(source))
    with pytest.raises(CheckpointMismatchError, match="missing from the file.*third"):
        load_variables(path, checkpoint_variables(square(["second", "third"])))

    reordered = square(["second", "first"])
    load_variables(path, dict(reversed(checkpoint_variables(reordered).items())))
    for name in ("first", "second"):
        np.testing.assert_array_equal(reordered.get_layer(name).kernel, source.get_layer(name).kernel)
    assert not np.array_equal(reordered.layers[0].kernel, source.layers[0].kernel)  # positions differ


def test_checkpoint_names_are_unique_with_a_loss_scale_optimizer_and_a_second_optimizer(tmp_path):
    """Mixed precision (GPU) wraps Adam in a LossScaleOptimizer with its own `iteration`; each phase compiles a
    new optimizer whose name Keras numbers (adam_1): neither may change or collide the checkpoint's names."""
    import keras

    from pipeline.runs.folder import save_variables

    model = _tiny_fit_model()
    first, second = (keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()) for _ in range(2))
    for opt in (first, second):
        opt.build(model.trainable_variables)
    names = checkpoint_variables(model, first)
    assert {"optimizer/iteration", "optimizer/loss_scale/iteration", "optimizer/loss_scale/dynamic_scale"} <= set(names)
    assert len(names) == len(model.variables) + len(first.variables)
    first.inner_optimizer.iterations.assign(7)
    save_variables(tmp_path / "c.npz", names)
    load_variables(tmp_path / "c.npz", checkpoint_variables(model, second))
    assert int(second.inner_optimizer.iterations) == 7


def test_a_damaged_checkpoint_is_named(tmp_path):
    from pipeline.runs.folder import DamagedFileError, save_variables

    model = _tiny_fit_model()
    path = tmp_path / "c.npz"
    save_variables(path, checkpoint_variables(model))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DamagedFileError, match=r"c.npz is damaged"):
        load_variables(path, checkpoint_variables(model))


def test_head_phase_validation_from_cached_features_equals_keras_evaluate(shapes_dir, tmp_path):
    """With augmentation on, the head phase validates on features computed once: same numbers as
    Keras's own evaluation of the whole training model (augmentation, dropout, frozen base)."""
    cfg = tiny_config(
        augment={"enabled": True, "flip": "horizontal", "rotation": 0.1, "zoom": 0.1}, train={"label_smoothing": 0.1}
    )
    splits = data_mod.make_splits(data_mod.scan(data_mod.resolve_source(str(shapes_dir))), cfg.data, seed=0)
    cache = data_mod.ImageCache(splits.paths("val"), cfg.model.image_size, memory_budget_mb=64)
    labels = splits.labels("val")
    models = _initial_models(cfg)
    model_mod.freeze_base(models)
    train_mod._compile(models.train, train_mod.phases_for(cfg)[0], cfg, 4, place(cfg))
    val_ds = data_mod.make_dataset(cache, labels, 3, 8, shuffle=False, seed=0)
    expected = models.train.evaluate(val_ds, verbose=0, return_dict=True)

    features = models.features.predict(val_ds.map(lambda x, y: x), verbose=0)
    callback = FeatureValidation(models.head, features, np.eye(3, dtype=np.float32)[labels], 0.1)
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs["val_accuracy"] == pytest.approx(expected["accuracy"])
    assert logs["val_loss"] == pytest.approx(expected["loss"], rel=1e-5)
    cache.close()


def test_resuming_without_a_finished_phase_checkpoint_is_one_clear_error(shapes_dir, tmp_path):
    cfg = tiny_config(train={"strategy": "fine_tune", "head_epochs": 1, "fine_tune_epochs": 1})
    run = train_mod.train(str(shapes_dir), tmp_path / "run", cfg, evaluate_after=False)
    state = json.loads(run.state.read_text())
    run.state.write_text(json.dumps({**state, "status": "cancelled"}))
    run.phase_done_weights("head").unlink()  # and a finished run keeps no epoch checkpoints
    with pytest.raises(train_mod.RunFolderError, match="head phase as finished but head.done.npz is missing"):
        train_mod.train(str(shapes_dir), run.root, cfg, evaluate_after=False)


def test_damaged_best_weights_fall_back_to_the_last_epoch_with_a_warning(shapes_dir, tmp_path):
    cfg = tiny_config(train={"strategy": "feature_extraction", "head_epochs": 2})
    run = train_mod.train(str(shapes_dir), tmp_path / "run", cfg, evaluate_after=False)
    state = json.loads(run.state.read_text())
    best = run.best_weights
    best.write_bytes(b"PK\x03\x04 cut short")
    run.state.write_text(json.dumps({**state, "status": "cancelled"}))  # as if killed while writing model.keras
    run.model.unlink()
    events = []
    train_mod.train(str(shapes_dir), run.root, cfg, evaluate_after=False, on_event=events.append)
    warning = next(e["message"] for e in events if e["event"] == "warning")
    assert f"{best} is damaged" in warning and "model.keras holds the last epoch's weights" in warning
    assert run.model.exists() and json.loads(run.state.read_text())["best"]["epoch"] == 2
    assert best.exists()  # not deleted


def test_fused_adam_follows_keras_adam_and_runs_one_kernel_per_variable():
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 6, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 64)]

    def trained(optimizer):
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [
                keras.Input((6, 6, 3)),
                keras.layers.Conv2D(4, 3, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(3, activation="softmax"),
            ]
        )
        start = [np.array(w) for w in model.trainable_weights]
        model.compile(optimizer=optimizer, loss="categorical_crossentropy")
        for _ in range(5):
            model.train_on_batch(x, y)
        return start, [np.array(w) for w in model.trainable_weights], int(optimizer.iterations)

    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=2, decay_rate=0.5, staircase=True)
    start, reference, steps = trained(keras.optimizers.Adam(schedule))
    _, fused, fused_steps = trained(fused_adam_class()(schedule))
    assert steps == fused_steps == 5
    for w0, a, b in zip(start, reference, fused, strict=True):
        assert np.abs(a - w0).max() > 1e-3  # it trained
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)

    opt = fused_adam_class()(1e-3)
    variables = [keras.Variable(np.ones((2, 2), "float32")), keras.Variable(np.zeros(3, "float32"))]
    opt.build(variables)
    step = tf.function(lambda: opt.apply_gradients(zip([tf.ones((2, 2)), tf.ones(3)], variables, strict=True)))
    ops = [op.type for op in step.get_concrete_function().graph.get_operations()]
    assert ops.count("ResourceApplyAdam") == 2


# === The run folder's files: damaged, torn, rolled back ===


def test_metrics_writer_starts_on_a_new_line_after_a_torn_one_and_readers_skip_it(tmp_path):
    from pipeline.runs.folder import MetricsWriter

    run = RunFolder(tmp_path)
    run.metrics.write_text('{"event": "epoch", "phase": "head", "epoch": 1}\n{"event": "epo')
    writer = MetricsWriter(run.metrics)
    writer.write({"event": "epoch", "phase": "head", "epoch": 2})
    writer.close()
    assert run.metrics.read_text().endswith('{"event": "epo\n{"event": "epoch", "phase": "head", "epoch": 2}\n')
    assert [e["epoch"] for e in run.epochs()] == [1, 2]


def test_a_rollback_line_voids_the_later_epochs_of_its_phase(tmp_path):
    run = RunFolder(tmp_path)
    lines = [{"event": "epoch", "phase": "head", "epoch": e} for e in (1, 2, 3)]
    lines += [{"event": "rollback", "phase": "head", "epoch": 1}, {"event": "epoch", "phase": "head", "epoch": 2}]
    run.metrics.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert [e["epoch"] for e in run.epochs()] == [1, 2]


def test_a_damaged_state_file_is_named_with_the_way_forward(tmp_path):
    from pipeline.runs.folder import DamagedFileError
    from pipeline.runs.ledger import Ledger

    run = RunFolder(tmp_path)
    run.write_state(Ledger(status="running"))
    run.write_state(Ledger.from_dict({"status": "running", "phases": {"head": {"epochs_done": 1}}}))
    assert json.loads(run.previous_state.read_text())["phases"] == {}
    run.state.write_text("{")
    with pytest.raises(DamagedFileError, match="state.json is damaged .*it goes on from state.prev.json"):
        run.read_state()
    state, note = run.recover_state()
    assert state.phases == {} and "resumed from state.prev.json" in note
    assert (tmp_path / "state.json.damaged").read_text() == "{"

    run.state.write_text("[]")
    run.previous_state.write_text("")
    with pytest.raises(DamagedFileError, match="so is .*its previous copy.*train into a new run folder"):
        run.recover_state()
