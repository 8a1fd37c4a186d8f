"""Grad-CAM: the closed form equals the gradient TensorFlow takes, it runs on every backbone, it points at what
decides the class (a coloured patch in a random corner), and the CLI writes overlays and names what it cannot read."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline import backbones
from pipeline.quality.explain import Explainer, upsampled
from pipeline.training import model as model_mod
from pipeline.training import train as train_mod
from tests.conftest import ROOT, tiny_config


def test_the_closed_form_is_the_gradient_tensorflow_takes():
    """alpha_k = W[k, c] / HW: the keras-io method (a gradient tape on the class logit) gives the same heatmap."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    cfg = tiny_config(model={"backbone": "small_cnn", "image_size": 32}, train={"strategy": "from_scratch"})
    model = model_mod.build_models(cfg, 3).inference
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    found = Explainer(model).explain(pixels)

    features = keras.Model(model.inputs, model.get_layer("pool").input)
    dense = model.get_layer("predictions")
    for i, e in enumerate(found):
        x = tf.constant(pixels[i : i + 1])
        with tf.GradientTape() as tape:
            fmap = features(x)
            tape.watch(fmap)
            logits = tf.matmul(model.get_layer("pool")(fmap), dense.kernel) + dense.bias  # the model's pooling
            score = logits[:, e.class_index]
        grads = tape.gradient(score, fmap)
        alpha = tf.reduce_mean(grads, axis=(1, 2))  # keras-io: pooled gradients
        cam = tf.nn.relu(tf.reduce_sum(fmap * alpha[:, None, None, :], axis=-1))[0].numpy()
        assert np.allclose(e.heatmap, cam / cam.max(), atol=1e-4)
    expected = model.predict(pixels, verbose=0)
    assert np.allclose(np.stack([e.probabilities for e in found]), expected, atol=1e-5)
    assert [e.class_index for e in found] == expected.argmax(1).tolist()


@pytest.mark.parametrize("name", backbones.names())
def test_every_backbone_has_a_heatmap(name):
    spec = backbones.get(name)
    alpha = spec.alphas[0] if spec.alphas else 1.0
    cfg = tiny_config(
        model={"backbone": name, "alpha": alpha, "image_size": max(spec.min_size, 32), "weights": "none"},
        train={"strategy": "from_scratch"},
    )
    model = model_mod.build_models(cfg, 2).inference
    size = cfg.model.image_size
    pixels = np.random.default_rng(1).integers(0, 256, (2, size, size, 3)).astype("float32")
    for e in Explainer(model).explain(pixels, class_index=1):
        assert e.heatmap.ndim == 2 and np.isfinite(e.heatmap).all()
        assert e.heatmap.min() >= 0.0 and e.heatmap.max() <= 1.0 and e.class_index == 1


def _corner_patch_set(root, per_class: int, size: int = 48, seed: int = 0):
    """Two classes told apart only by a small patch's colour (red or blue), in a random corner of grey noise."""
    rng = np.random.default_rng(seed)
    quadrants = {}
    patch = size // 5
    for cls, colour in (("blue", (40, 60, 230)), ("red", (230, 40, 40))):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(90, 150, (size, size, 1)).repeat(3, axis=2).astype(np.uint8)
            q = int(rng.integers(4))
            top = int(rng.integers(2, size // 2 - patch - 2)) + (size // 2 if q // 2 else 0)
            left = int(rng.integers(2, size // 2 - patch - 2)) + (size // 2 if q % 2 else 0)
            img[top : top + patch, left : left + patch] = colour
            name = f"{cls}_{i:03d}.png"
            Image.fromarray(img).save(root / cls / name)
            quadrants[f"{cls}/{name}"] = q
    return quadrants


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("patch")
    quadrants = _corner_patch_set(root / "patches", per_class=60)
    cfg = tiny_config(
        model={"backbone": "small_cnn", "image_size": 48},
        train={"strategy": "from_scratch", "head_epochs": 10, "learning_rate": 3e-3},
        data={"val_fraction": 0.2, "test_fraction": 0.25},
    )
    return train_mod.train(str(root / "patches"), root / "run", cfg), quadrants


def test_the_heatmap_falls_on_the_patch_that_decides_the_class(patch_run):
    """On held-out images, most of the heatmap's mass lies in the patch's quadrant for at least 80% of them."""
    from pipeline.runs.folder import load_model

    run, quadrants = patch_run
    evaluation = json.loads(run.eval.read_text())
    assert evaluation["split"] == "test" and evaluation["accuracy"] >= 0.9, evaluation["accuracy"]
    test = json.loads(run.dataset.read_text())["splits"]["test"]
    root = json.loads(run.dataset.read_text())["splits"]["root"]
    pixels = np.stack([np.asarray(Image.open(f"{root}/{rel}").convert("RGB")) for rel, _ in test])
    found = Explainer(load_model(run)).explain(pixels)
    inside = []
    for (rel, _), e in zip(test, found, strict=True):
        heat = upsampled(e.heatmap, 48)
        q = quadrants[rel]
        rows = slice(24, 48) if q // 2 else slice(0, 24)
        cols = slice(24, 48) if q % 2 else slice(0, 24)
        inside.append(heat[rows, cols].sum() / max(heat.sum(), 1e-9) > 0.5)
    assert np.mean(inside) >= 0.8, (np.mean(inside), len(inside))


def test_cli_writes_an_overlay_per_image_and_names_an_unreadable_file(patch_run, tmp_path):
    run, _ = patch_run
    root = json.loads(run.dataset.read_text())["splits"]["root"]
    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    Image.open(f"{root}/red/red_000.png").save(photos / "a.png")
    Image.open(f"{root}/blue/blue_000.png").save(photos / "more" / "a.png")  # the same stem: a second name
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "why"

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "pipeline", "explain", str(run.root), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = cli(str(photos), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 of 3 images explained, 1 unreadable" in done.stderr
    assert (
        "photos/broken.png: not explained:" in done.stdout
        and str(tmp_path / "photos") not in done.stdout.split("not explained:")[1].splitlines()[0]
    )
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a-2.gradcam.png", "a.gradcam.png"], written
    assert "photos/a.png: red (" in done.stdout and "photos/more/a.png: blue (" in done.stdout
    with Image.open(out / "a.gradcam.png") as png:
        assert png.format == "PNG" and png.width >= 224
    refused = cli(str(photos / "a.png"), "--out", str(out), "--class", "green")
    assert refused.returncode == 2 and "'green' is not one of the run's classes (blue, red)" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_every_file_the_background_commands_write_is_a_run_entry():
    """``delete`` removes a folder only when all it holds are names a run writes: the map's and the label-issue
    search's files among them (a new one missing here would make a run undeletable)."""
    from export import task
    from pipeline.quality import dataset_map, label_issues, predict
    from pipeline.runs.folder import RUN_ENTRIES

    for background in (label_issues.SEARCH, dataset_map.BUILD, task.EXPORT, predict.APP):
        assert {background.status_name, background.log_name} <= RUN_ENTRIES, background
    assert {label_issues.RESULT_NAME, dataset_map.RUN_MAP_NAME, predict.APP_OUT, predict.APP_SUMMARY} <= RUN_ENTRIES
