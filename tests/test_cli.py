"""The documented command, run as a user runs it: `python experiments/train.py ...`."""

import json
import os
import stat
import subprocess
import sys

import pytest
from conftest import REPO

EXPECTED_METRICS = (
    "test/mse",
    "test/rmse",
    "test/sse_per_example",
    "test/bce",
    "test/pca_mse",
    "test/denoise_mse",
    "test/mean_code_activation",
    "test/code_nonzero_per_example",
    "test/jacobian_fro",
    "train/loss",
    "time/train_seconds",
    "train/samples_per_second",
)


def _run(tmp_path, *overrides):
    cmd = [
        sys.executable,
        "experiments/train.py",
        f"hydra.run.dir={tmp_path}",
        "trainer.devices=1",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_train_command_writes_every_output(tmp_path):
    proc = _run(tmp_path, "trainer.epochs=4", "trainer.log_every=2", "noise=masking")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "epoch 4/4" in log and "eval mse" in log and "ex/s" in log
    assert "sets a sweep" not in log and "WARNING" not in log, log[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in EXPECTED_METRICS:
        assert key in metrics, key
    for name in (
        "history.jsonl",
        "history.csv",
        "reconstructions.png",
        "training_curves.png",
        "code_activations.png",
        "reconstructions.npz",
        "params.msgpack",
        "config.yaml",
        ".hydra/config.yaml",
        "train.log",
    ):
        assert (tmp_path / name).exists(), name
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "completed"
    # readable as the user's other files (the atomic writes' temporary files were 0600)
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("metrics.json", "config.yaml", "history.csv", "reconstructions.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name


def test_a_sweep_file_without_multirun_says_it_trains_one_run(tmp_path):
    # +sweep=latent without --multirun trained one run without a word about its grid
    proc = _run(tmp_path, "+sweep=latent", "trainer.epochs=1")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert (
        "this config sets a sweep (model.latent_dim=2,4,8,16,32, trainer.seed=0,1,2), which only "
        "--multirun runs: this is one run, of the values it composes to; add --multirun" in log
    ), log[-3000:]


def test_bad_input_exits_with_a_clear_message_and_no_traceback(tmp_path):
    proc = _run(tmp_path, "model.latent_dim=-3")
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "model.latent_dim=-3" in out and "positive integer" in out
    assert "Traceback" not in out
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "latent_dim" in status["error"]


def test_unknown_dataset_lists_what_exists(tmp_path):
    proc = _run(tmp_path, "data=cifar100")
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "data=cifar100" in out and "choose one of:" in out
    assert "digits" in out and "mnist" in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


def test_hydras_own_groups_and_keys_are_one_line(tmp_path):
    """A misspelt launcher and an experiment without its ``+`` were Hydra's several lines and
    its hint to set HYDRA_FULL_ERROR."""
    for args, said in (
        (["hydra/launcher=vmapp"], "did you mean hydra/launcher=vmap?"),
        (["experiment=rifai2011_cae_mnist"], "+experiment=rifai2011_cae_mnist"),
        (["hydra.launcher.n_jobs=2"], "(hydra/launcher=basic) has no setting 'n_jobs'"),
    ):
        proc = _run(tmp_path / "run", *args)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2 and said in out and len(out.strip().splitlines()) == 1, out
        assert not (tmp_path / "run").exists()  # refused before Hydra made the run directory


def _show(*flags):
    cmd = [sys.executable, "experiments/train.py", *flags]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_hydras_flags_with_values_are_not_taken_for_settings():
    """``--cfg job`` was refused as "job is not a setting"; ``--info`` printed each of its
    lines twice (absl's import-time root handler beside Hydra's)."""
    assert "latent_dim: 16" in _show("--cfg", "job", "model.latent_dim=16")
    assert _show("-c", "job", "-p", "model").startswith("# @package model\nkind: mlp")
    out = _show("--info", "plugins")
    assert out.count("Installed Hydra Plugins") == 1 and "VmapLauncher" in out
    assert "DEBUG:" not in out


def _reader_leaves(cmd, lines):
    """Run ``cmd`` with its stdout a pipe whose reader reads ``lines`` lines and leaves."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for _ in range(lines):
        proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(timeout=600), err


def test_a_reader_that_leaves_the_pipe_ends_the_output_not_the_run(tmp_path):
    """``train.py --help | head`` ended in a BrokenPipeError traceback, and ``train.py | head``
    printed a "Logging error" traceback for every console line after the reader left."""
    rc, err = _reader_leaves([sys.executable, "experiments/train.py", "--help"], 0)
    assert rc == 141 and err == "", err
    cmd = [sys.executable, "experiments/train.py", f"hydra.run.dir={tmp_path}"]
    rc, err = _reader_leaves([*cmd, "trainer.epochs=40", "trainer.log_every=1"], 1)
    assert rc == 0 and err == "", err
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "completed"
    assert "epoch 40/40" in (tmp_path / "train.log").read_text()  # the log has every line


def test_a_stop_signal_while_a_multirun_job_writes_its_outputs_stops_the_multirun(tmp_path):
    """A Ctrl-C after a job's last epoch, while it evaluated and wrote its outputs, let the
    job complete, and the next job's start then cleared the request: the multirun went on
    with every job. The job still completes; the multirun stops before the next (exit status
    130), and a single run, which has no next job, just completes."""
    from omegaconf import OmegaConf

    from ae_jax.cli import run_or_exit
    from ae_jax.config import Config
    from ae_jax.training import loop

    def job(cfg, workdir, rundir):
        rundir.start("name: x\n")
        loop._RECEIVED[:] = ["Ctrl-C"]  # as loop._on_stop_signal records it
        loop._SIGTERM.set()
        return {"test/mse": 1.0}

    cfg = OmegaConf.structured(Config())
    try:
        with pytest.raises(SystemExit) as stop:
            run_or_exit(job, cfg, tmp_path / "0", exit_on_error=False)
        assert stop.value.code == 130
        assert run_or_exit(job, cfg, tmp_path / "single") == {"test/mse": 1.0}
    finally:
        loop._SIGTERM.clear()
        loop._RECEIVED.clear()
    for d in ("0", "single"):
        assert json.loads((tmp_path / d / "status.json").read_text())["status"] == "completed"


def test_every_metric_a_run_writes_is_one_a_score_may_name(tmp_path):
    """``score`` is checked against ``METRIC_NAMES`` before training: a metric some run
    writes and the list lacks would be refused. Every committed reproduction (pipelines,
    probes, k-sparse, PCA) and a run with every regulariser term and a validation split."""
    from conftest import train

    from ae_jax.config import METRIC_NAMES
    from ae_jax.registry import REGULARIZERS

    metrics = train(
        tmp_path,
        "model=shallow",
        "model.code_activation=sigmoid",
        "reg=[l1,kl_sparse,contractive,weight_decay]",
        "noise=masking",
        "trainer.epochs=2",
        "data.validation=0.2",
        "trainer.early_stopping=true",
    )
    keys = set(metrics)
    for path in REPO.glob("results/**/metrics.json"):
        keys |= set(json.loads(path.read_text()))
    assert len(keys) > 100
    unknown = {k for k in keys if k.rpartition("/")[2] not in (*METRIC_NAMES, *REGULARIZERS)}
    assert not unknown, sorted(unknown)


def test_compilation_cache_keeps_programs_between_runs(tmp_path):
    """enable_compilation_cache points JAX's persistent cache at $AE_JAX_COMPILATION_CACHE,
    where compiled programs are written for the next run; "off" disables it, and so does a
    directory that cannot be created, with one warning that names it."""
    code = (
        "import jax, jax.numpy as jnp; from ae_jax.cli import enable_compilation_cache; "
        "print(enable_compilation_cache()); "
        # a random init: ~0.5 s of compiling, over the cache's 0.1 s threshold
        "jax.jit(lambda k: jax.random.truncated_normal(k, -2.0, 2.0, (64, 64)))"
        "(jax.random.key(0)).block_until_ready()"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    (tmp_path / "a-file").write_text("")
    unwritable = str(tmp_path / "a-file" / "xla")  # under a file: cannot be created
    for setting, expected in (
        (str(tmp_path / "xla"), str(tmp_path / "xla")),
        ("off", "None"),
        (unwritable, "None"),
    ):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**env, "AE_JAX_COMPILATION_CACHE": setting},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == expected
        warned = f"compilation cache off: cannot create {unwritable}" in done.stderr
        assert warned == (setting == unwritable), done.stderr[-2000:]
    assert any((tmp_path / "xla").iterdir())  # the program was written for the next run


def test_a_file_that_cannot_be_written_names_itself_and_keeps_the_earlier_one(tmp_path):
    import errno

    import pytest

    from ae_jax.cli import os_error_line
    from ae_jax.run_io import write_atomic, write_text_atomic

    target = tmp_path / "reconstructions.npz"
    write_text_atomic(target, "the earlier file")

    def full_disk(f):
        f.write(b"part of it")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        write_atomic(target, full_disk)
    assert err.value.filename == str(target) and err.value.errno == errno.ENOSPC
    assert target.read_text() == "the earlier file"  # whole, or as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reconstructions.npz"]  # no .tmp left
    line = os_error_line(err.value, tmp_path)
    assert line.startswith(f"{target}: No space left on device (")
    assert " free there); free space and run the same command again: it resumes" in line


def test_the_console_keeps_library_chatter_and_tracebacks_off():
    # a tracker's store failing mid-run: MLflow logged two SQLAlchemy tracebacks (60 lines)
    # before our one-line warning; they stay in train.log
    import logging
    import sys

    from ae_jax.cli import on_console

    def record(name, level, exc=False):
        try:
            raise OSError("database is locked")
        except OSError:
            info = sys.exc_info() if exc else None
        return logging.LogRecord(name, level, __file__, 1, "message", None, info)

    assert on_console(record("ae_jax", logging.INFO))
    assert on_console(record("ae_jax.train", logging.ERROR, exc=True))  # ours, as they are
    assert on_console(record("hydra", logging.INFO))
    assert on_console(record("mlflow.store", logging.WARNING))  # a library's word, alone
    assert not on_console(record("mlflow.store.db.utils", logging.ERROR, exc=True))
    assert not on_console(record("jax._src.xla_bridge", logging.INFO))


def test_a_log_file_that_can_no_longer_be_written_is_dropped_with_one_warning(
    tmp_path, capsys, caplog
):
    import errno
    import logging

    from ae_jax.cli import quiet_console

    root = logging.getLogger()
    handler = logging.FileHandler(tmp_path / "train.log")
    root.addHandler(handler)

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    try:
        quiet_console()
        handler.stream.close()
        handler.stream = FullDisk()
        logging.getLogger("ae_jax").warning("one line")
        logging.getLogger("ae_jax").warning("another line")
        assert handler not in root.handlers
        dropped = [r.getMessage() for r in caplog.records if "can no longer" in r.getMessage()]
        assert dropped == [
            f"{tmp_path / 'train.log'} can no longer be written (No space left on device): "
            "the console has the rest"
        ]
        err = capsys.readouterr().err
        assert "Logging error" not in err and "Traceback" not in err
    finally:
        if handler in root.handlers:
            root.removeHandler(handler)


def test_a_compilation_cache_that_fills_up_says_so_once(capsys):
    import warnings

    from ae_jax.cli import _one_cache_write_warning

    shown = []
    with warnings.catch_warnings():  # restores warnings.showwarning afterwards
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        _one_cache_write_warning("/cache")
        for name in ("jit_init", "jit_epoch", "jit_eval"):
            warnings.warn(
                f"Error writing persistent compilation cache entry for '{name}': OSError: "
                "[Errno 28] No space left on device",
                UserWarning,
                stacklevel=1,
            )
        warnings.warn("something else", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.count("compilation cache") == 1, err
    assert (
        "warning: the compilation cache /cache cannot take more programs (OSError: [Errno 28] "
        "No space left on device); they compile again in later runs until it can" in err
    )
    assert shown == ["something else"]  # other warnings are shown as before


@pytest.mark.parametrize(
    ("args", "rc", "said"),
    [
        (["--help"], 0, "Launch ae-jax on a Cloud TPU VM"),
        (["setup"], 2, "launch_tpu.sh setup needs NAME ZONE (got 0 argument(s))"),
        (["pod", "slice", "zone"], 2, "launch_tpu.sh pod needs NAME ZONE RUN_DIR"),
        (["launch"], 2, "launch_tpu.sh: unknown mode 'launch'; the modes are setup, single, pod"),
    ],
)
def test_the_tpu_launcher_says_what_it_needs(args, rc, said):
    # `launch_tpu.sh setup` without its arguments died on "$1: unbound variable"
    proc = subprocess.run(
        ["bash", "scripts/launch_tpu.sh", *args], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == rc and said in proc.stdout + proc.stderr
    assert "unbound" not in proc.stderr
