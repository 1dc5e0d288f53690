"""The benchmark script runs end to end in its tiny mode and writes valid JSON; FLOP counts.

No timing is asserted: the figures depend on the machine and on what else runs on it. What is
asserted is that every section is there, every rate is a positive finite number, the phases of
the startup add up, and the FLOP counts match the closed forms.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from ae_jax import benchmarking as bm

HINTON_DIMS = (784, 1000, 500, 250, 30, 250, 500, 1000, 784)


def test_mlp_flops_are_six_per_weight():
    weights = 2 * (784 * 1000 + 1000 * 500 + 500 * 250 + 250 * 30)  # encoder + mirrored decoder
    assert bm.mlp_flops_per_example(HINTON_DIMS) == 6 * weights == 16_998_000


def test_conv_flops_count_the_taps_of_each_layer():
    macs = (
        14 * 14 * 9 * 1 * 32  # 28x28x1 -> 14x14x32, stride 2
        + 7 * 7 * 9 * 32 * 64  # 14x14x32 -> 7x7x64
        + 2 * 7 * 7 * 64 * 30  # Dense to the code and back
        + 7 * 7 * 9 * 64 * 32  # transposed: each of the 7x7 inputs scatters 9 taps
        + 14 * 14 * 9 * 32 * 1
    )
    assert bm.conv_flops_per_example((28, 28, 1), (32, 64), 3, 30) == 6 * macs


def test_matmul_shapes_skip_the_input_gradient_of_the_first_layer():
    shapes = bm.mlp_matmul_shapes(128, (784, 1000, 30))
    assert shapes == [
        (128, 784, 1000, "nn"),  # forward x W
        (784, 128, 1000, "tn"),  # weight gradient x^T g
        (128, 1000, 30, "nn"),
        (1000, 128, 30, "tn"),
        (128, 30, 1000, "nt"),  # input gradient g W^T
    ]


@pytest.mark.parametrize("form", sorted(bm.FORMS))
def test_each_matmul_form_computes_the_same_product(form):
    a, b = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
    shapes, product = bm.FORMS[form]
    assert shapes(2, 3, 4) == (
        a.T.shape if form == "tn" else a.shape,
        b.T.shape if form == "nt" else b.shape,
    )
    stored = (a.T if form == "tn" else a, b.T if form == "nt" else b)
    np.testing.assert_allclose(product(*stored), a @ b)


def test_score_divides_by_the_best_ceiling():
    start = {"gflops": 150.0, "gflops_per_cpu_second": 80.0}
    end = {"gflops": 200.0, "gflops_per_cpu_second": 75.0}
    ceiling = bm.best_ceiling(start, end)
    assert ceiling == {"gflops": 200.0, "gflops_per_cpu_second": 80.0}
    row = bm.score({"gflops": 150.0, "gflops_per_cpu_second": 60.0}, ceiling, {"gflops": 180.0})
    assert row["pct_of_ceiling"] == 75.0 and row["pct_of_ceiling_cpu"] == 75.0
    assert row["pct_of_shape_ceiling"] == pytest.approx(100 * 150 / 180)


def test_pure_step_timing_needs_one_device():
    two_devices = type("Trainer", (), {"parallel": type("Parallel", (), {"devices": [0, 1]})})()
    with pytest.raises(bm.BenchmarkError, match="trainer.devices=1"):
        bm.pure_step_times(two_devices, repeats=1)


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory, mnist_path):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as in a run
    env["AE_JAX_MNIST_DIR"] = str(mnist_path)
    done = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--tiny", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_tiny_run_writes_every_section(tiny_result):
    result, table = tiny_result
    sections = {"machine", "ceiling", "training", "end_to_end", "startup", "sweep", "memory"}
    assert sections <= set(result)
    assert result["tiny"] is True
    ceiling = result["ceiling"]
    assert _positive(ceiling["best"]["gflops"])
    starts_and_ends = (ceiling["square_start"]["gflops"], ceiling["square_end"]["gflops"])
    assert ceiling["best"]["gflops"] == max(starts_and_ends)
    assert "ceiling (best)" in table and "MNIST end to end" in table
    assert "vmap sweep: 8 members" in table and "time ratio 8 members / 1 member" in table


def test_tiny_training_rows_are_positive_rates(tiny_result):
    rows = tiny_result[0]["training"]
    assert [r["model"].split()[0] for r in rows] == ["hinton", "digits", "conv"]
    for r in rows:
        for key in (
            "samples_per_second",
            "gflops",
            "pct_of_ceiling",
            "step_ms",
            "cpu_step_ms",
            "pure_step_ms",
            "compile_seconds",
        ):
            assert _positive(r[key]), (r["model"], key, r[key])
        # GFLOP/s is samples/s times the counted FLOPs: the two columns must agree
        assert r["gflops"] == pytest.approx(r["samples_per_second"] * r["flops_per_example"] / 1e9)
    assert rows[0]["flops_per_example"] == bm.mlp_flops_per_example(HINTON_DIMS)


def test_tiny_sweep_times_the_vmap_group_against_one_member(tiny_result):
    sweep = tiny_result[0]["sweep"]
    assert (sweep["members"], sweep["epochs"], sweep["batch_size"]) == (8, 2, 64)
    single, group = sweep["single"], sweep["vmap"]
    for r in (single, group):
        for key in ("train_seconds", "compile_seconds", "samples_per_second"):
            assert _positive(r[key]), (key, r)
    assert group["failed_members"] == 0
    assert sweep["time_ratio"] == pytest.approx(group["train_seconds"] / single["train_seconds"])
    examples = sweep["epochs"] * sweep["examples_per_epoch"]  # per member
    assert single["samples_per_second"] == pytest.approx(examples / single["train_seconds"])
    assert group["samples_per_second"] == pytest.approx(8 * examples / group["train_seconds"])
    ratio = group["samples_per_second"] / single["samples_per_second"]
    assert sweep["throughput_ratio"] == pytest.approx(ratio)


def test_sweep_members_differ_in_traced_settings_only():
    configs = bm.sweep_configs(64, epochs=1)
    assert len(configs) == 64 and bm.group_by_program(configs) == [list(range(64))]
    lrs = [c.optim.lr for c in configs]
    assert len(set(lrs)) == 64 and [c.trainer.seed for c in configs] == list(range(64))
    default = bm.digits_config().optim.lr
    assert lrs[0] == pytest.approx(default / 2) and lrs[-1] == pytest.approx(2 * default)
    assert bm.sweep_configs(1, epochs=1)[0].optim.lr == default
    with pytest.raises(bm.BenchmarkError, match="members=0 is not valid"):
        bm.sweep_configs(0, epochs=1)


def test_hinton_runs_at_8192_with_whole_batches():
    assert bm.HINTON_BATCHES == (128, 1000, 8192)
    assert bm.epoch_examples(12000, 128) == 12000
    assert bm.epoch_examples(12000, 8192) == 3 * 8192  # three batches, not one


def test_tiny_end_to_end_and_startup_phases_add_up(tiny_result):
    result = tiny_result[0]
    e2e = result["end_to_end"]
    assert e2e["examples"] > 0 and math.isfinite(e2e["final_train_loss"])
    for key in ("load_seconds", "compile_seconds", "epoch_seconds", "pure_epoch_seconds"):
        assert _positive(e2e[key]), key
    startup = result["startup"]["no_cache"]
    phases = [v for k, v in startup.items() if k not in ("total_to_first_step", "max_rss_mib")]
    assert all(v >= 0 for v in phases)
    assert sum(phases) == pytest.approx(startup["total_to_first_step"])
    assert _positive(result["memory"]["max_rss_mib"])


def _benchmark(*args):
    return subprocess.run(
        [sys.executable, "scripts/benchmark.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--repeats", "0"], "--repeats=0 is too small; it must be at least 1"),
        (["--examples", "500"], "--examples=500 is too small; it must be at least 1000"),
        (["--only", "speed"], "invalid choice: 'speed'"),
        (["--sweep-members", "0"], "--sweep-members=0 is too small; it must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_before_any_measurement(args, message):
    done = _benchmark(*args)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]


def test_missing_mnist_is_said_up_front_and_fails_the_run(tmp_path):
    out = tmp_path / "b.json"
    missing = tmp_path / "no-mnist"
    done = _benchmark(
        "--tiny", "--only", "end_to_end", "--mnist-dir", str(missing), "--out", str(out)
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"no MNIST IDX files in --mnist-dir={missing}" in done.stderr
    assert "MNIST end to end: not measured" in done.stdout
    assert str(missing) in json.loads(out.read_text())["end_to_end"]["error"]


def test_matmul_rates_in_bfloat16_and_a_bad_dtype_is_refused():
    rates = bm.matmul_rates(64, 64, 64, repeats=1, min_seconds=0.001, dtype="bfloat16")
    assert all(_positive(r) for r in rates)
    with pytest.raises(bm.BenchmarkError, match=r"dtype='float16' is not valid"):
        bm.matmul_rates(8, 8, 8, repeats=1, dtype="float16")


def test_torch_side_by_side_is_skipped_cleanly_without_torch():
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here: the side-by-side runs instead")
    assert bm.torch_hinton((32,), steps=2, repeats=1) == {"skipped": "torch is not installed"}
