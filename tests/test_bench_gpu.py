"""The GPU check's CPU smoke run: the project's own training through bench/bench_gpu.py, JSON lines out, and
nothing imported beyond numpy, Pillow, keras and jax (what those import themselves included)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_bench_gpu_smoke_runs_both_precisions_and_imports_only_numpy_pillow_keras_jax(tmp_path, shared_dir):
    out = tmp_path / "gpu.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "XLA_FLAGS")}
    proc = subprocess.run(
        [sys.executable, "bench/bench_gpu.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["check"] == "bench_gpu" and lines[0]["backend"] == "jax" and "total_seconds" in lines[-1]
    runs = [r for r in lines if "phases" in r]
    assert [(r["precision"], r["batch_size"]) for r in runs] == [("float32", 8), ("mixed_bfloat16", 8)]
    for r in runs:
        assert r["backend"] == "jax" and r["devices"] == ["cpu:0"]
        for phase in ("head", "fine_tune"):
            p = r["phases"][phase]
            assert p["epochs"] == 2 and p["images_per_second"] > 0 and p["compile_seconds"] >= 0
            assert 0 <= p["input_wait_fraction"] <= 1
        assert r["features_images_per_second"] > 0 and r["peak_device_memory_mb"] is None  # a CPU has none

    # What a bare `import numpy, PIL, keras, jax` brings in, on the JAX backend: the check may import no more.
    probe = (
        "import sys, numpy, PIL, PIL.Image, keras, jax; import keras.src.applications.mobilenet_v2; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    bare = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**env, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    for r in runs:
        extra = set(r["third_party_imports"]) - set(bare)
        assert not extra, extra
        assert "tensorflow" not in r["third_party_imports"]
