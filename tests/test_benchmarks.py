"""The benchmark scripts, run as the README writes them, end with a clear message rather than a traceback
when the data or the model is missing (they are not otherwise run by the suite: they take minutes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(script: str, *args: str, home: Path) -> subprocess.CompletedProcess:
    """The script in a fresh process with no MNIST anywhere: no $DIGITLAB_DATA_DIR, an empty home (no cache,
    no Keras copy) and a mirror that refuses at once (no waiting on the network)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DIGITLAB_DATA_DIR", "KERAS_HOME")}
    env.update(HOME=str(home), DIGITLAB_MIRRORS="http://127.0.0.1:9/", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, env=env, timeout=120, cwd=home)


@pytest.mark.parametrize("script", ["inference.py", "int8.py", "load.py", "siege.py", "conditions.py",
                                    "app_overhead.py"])
def test_without_data_a_message_not_a_traceback(tmp_path, tiny_model_path, script):
    proc = run_benchmark(script, str(tiny_model_path), home=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "not available offline" in last and "DIGITLAB_DATA_DIR" in last, proc.stderr


def test_inference_missing_model_or_argument(tmp_path):
    proc = run_benchmark("inference.py", "mnist.safetensors", home=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "mnist.safetensors" in proc.stderr.strip().splitlines()[-1]
    proc = run_benchmark("inference.py", home=tmp_path)
    assert proc.returncode == 2 and "usage: inference.py" in proc.stderr and "Traceback" not in proc.stderr


def test_prepare_benchmark_peak_is_the_childs_own(tmp_path):
    """benchmarks/prepare.py printed 317 MB for a 48 MP JPEG that peaks at ~80 MB: ru_maxrss in a child
    starts from the parent's peak (the parent had just built the 48 MP picture). VmHWM is the child's own."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_benchmark", ROOT / "benchmarks" / "prepare.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    held = np.ones(200 * 2**20, np.uint8)  # 200 MB held (and touched) by this process
    assert held.sum() == len(held)
    assert bench.child_peak_mb("x", code=bench.PEAK.replace("p = prepare(decode(sys.argv[1]))", "")) < 150


@pytest.mark.slow  # a subprocess importing OpenCV and the model (~2 s)
def test_feature_scores_needs_a_validation_split(tmp_path, tiny_model_path):
    """Thresholds come from the validation split, never from the test set: a model without one is refused."""
    proc = run_benchmark("feature_scores.py", str(tiny_model_path), home=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "without a validation split" in proc.stderr.strip().splitlines()[-1]


def test_record_without_data_a_message_not_a_traceback(tmp_path):
    proc = run_benchmark("record.py", "--seeds", "0", home=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "not available offline" in last and "DIGITLAB_DATA_DIR" in last and "record.py: " in proc.stderr


@pytest.mark.slow  # trains twice on 512 images in a subprocess (~4 s)
def test_record_dry_run(tmp_path, mnist_dir):
    """benchmarks/record.py end to end on 512 images (2 steps of the fast recipe's 256) and 100 test images:
    the machine, torch, the seeds, a warm-up not counted, a line per seed, mean +- std; no results file."""
    results = ROOT / "benchmarks" / "results"
    before = sorted(results.iterdir())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DIGITLAB_DATA_DIR": str(mnist_dir)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "record.py"), "--limit", "512", "--test-limit",
                           "100", "--seeds", "3", "--threads", "1"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "torch " in lines[0]
    assert "recipe fast: arch " in lines[1] and "1 threads; seeds 3; accuracy on test" in lines[1]
    assert lines[2].startswith("warm-up (seed 4, not counted): ")
    assert lines[3].startswith("seed 3: ") and "s training (" in lines[3] and "test accuracy" in lines[3]
    assert lines[4].startswith("test accuracy ") and "over 1 seeds" in lines[4] and " ± " in lines[4]
    assert sorted(results.iterdir()) == before  # a dry run's figures are not the recipe's


def test_record_val_holds_out_the_end_of_the_training_set(tmp_path, mnist_dir, monkeypatch):
    """--val trains on all but the last images of the (limited) training set and reports accuracy on those:
    never the test set's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("record_benchmark", ROOT / "benchmarks" / "record.py")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.argparse.Namespace(recipe="fast", val=True, data_dir=str(mnist_dir), threads=1, limit=1000,
                                    test_limit=None)
    r = bench.run_once(args, 0, tmp_path / "m.safetensors")
    assert r["train_images"] == 500 and r["epochs"] == bench.config_from_recipe("fast").epochs
    assert 0 <= r["accuracy"] <= 1 and r["train_seconds"] > 0
