"""The Runs page's stage line, replayed over a real tiny run's metrics.jsonl one record at a time."""

from pipeline.runs.folder import read_jsonl
from pipeline.training.train import train
from tests.conftest import tiny_config, write_shapes_dataset


def test_every_stage_is_named_in_order_and_no_bar_sits_full(tmp_path):
    from pipeline.runs.events import stage

    shapes = write_shapes_dataset(tmp_path / "shapes", per_class=8)
    cfg = tiny_config(train={"head_epochs": 2, "fine_tune_epochs": 1, "progress_every": 1}, augment={"enabled": True})
    train(str(shapes), tmp_path / "run", cfg)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")

    assert stage("queued", [], cfg) == ("Queued: waiting for the worker to start it.", None)
    seen = []
    for i in range(len(records) + 1):
        text, fraction = stage("running", records[:i], cfg)
        assert fraction is None or 0 <= fraction < 1, (text, fraction)  # a finished count is never the stage
        if not seen or seen[-1] != text:
            seen.append(text)
    joined = "\n".join(seen)
    # (a tiny split's decoding reports only its end; a real one reports counts on the way, shown as a bar)
    order = [
        "Starting: loading TensorFlow.",
        "Loading the images.",
        "Decoding the validation images.",
        "Building the model",
        "Head phase, epoch 1 of 2: compiling the first step",
        "Head epoch 1 of 2: batch 1 of 3",
        "Head epoch 2 of 2: starting.",
        "Head epoch 2 of 2: batch 2 of 3",
        "Head phase done: unfreezing the base",
        "Fine-tune phase, epoch 1 of 1: compiling",
        "Fine-tune epoch 1 of 1: batch 1 of 3",
        "Training done: saving the model",
        "Evaluating the model on the held-out split.",
    ]
    positions = [joined.find(s) for s in order]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), list(zip(order, positions, strict=True))
