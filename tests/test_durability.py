"""One durable loop for every path, and a run directory that belongs to one config.

Multi-stage pipelines and vectorised sweep groups are killed (SIGKILL, SIGTERM) part-way and the
same command is run again: the result must be bitwise equal to an uninterrupted run, and the
rerun must prove it resumed (complete stages are not trained again). Then the run-directory
contract: a rerun with another config, another model, a second process, an unwritable path, a
bad value in a multirun: one line, exit status 2, and nothing of the earlier run changed.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

TIMING = ("time/", "samples_per_second", "compile")

PIPELINE = (
    "trainer.devices=1",
    "+pretrain=layerwise",
    "model.widths=[32,16]",
    "model.depth=2",
    "model.latent_dim=8",
    "pretrain.layer_epochs=30",
    "trainer.epochs=30",
    "pretrain.supervised=true",
    "pretrain.supervised_epochs=30",
    "pretrain.probe=false",
    "pretrain.baseline=false",
    "trainer.checkpoint_every=5",
    "trainer.figures=false",
)
SWEEP = (
    "trainer.devices=1",
    "noise=masking",
    "noise.level=0,0.2",
    "trainer.seed=0,1",
    "hydra/launcher=vmap",
    "trainer.epochs=120",
    "trainer.checkpoint_every=10",
    "trainer.figures=false",
)


def _cmd(*args):
    return [sys.executable, "experiments/train.py", *args]


def _run(*args, timeout=600):
    return subprocess.run(_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _metrics(path: Path) -> dict:
    m = json.loads(path.read_text())
    return {k: v for k, v in m.items() if not any(t in k for t in TIMING)}


def _sweep_metrics(root: Path) -> dict:
    return {p.parent.name: _metrics(p) for p in sorted(root.glob("*/metrics.json"))}


def _started(args, root: Path, pattern: str) -> subprocess.Popen:
    """Start the command; return once a file matching ``pattern`` under ``root`` exists."""
    proc = subprocess.Popen(
        _cmd(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while not list(root.glob(pattern)):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, f"no {pattern} appeared under {root}"
        time.sleep(0.02)
    return proc


def _interrupt(args, ready: Path, sig) -> subprocess.CompletedProcess:
    """Start the command, wait until ``ready`` exists (a committed checkpoint), send ``sig``."""
    proc = _started(args, ready, "_CHECKPOINT_METADATA")
    proc.send_signal(sig)
    out = proc.communicate(timeout=300)[0]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


@pytest.fixture(scope="module")
def pipeline_reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline") / "ref"
    proc = _run(f"hydra.run.dir={d}", *PIPELINE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, ready, resumed",
    [
        (signal.SIGKILL, "pretrain/layer_1/checkpoints/10", "pretrain/layer_0"),
        (signal.SIGTERM, "supervised/checkpoints/5", "finetune"),
    ],
)
def test_pipeline_resumes_at_its_stage_bitwise(tmp_path, pipeline_reference, sig, ready, resumed):
    args = (f"hydra.run.dir={tmp_path}", *PIPELINE)
    first = _interrupt(args, tmp_path / ready, sig)
    if sig == signal.SIGTERM:
        assert first.returncode == 0, first.stdout[-2000:]
        assert "SIGTERM: saved stage supervised" in first.stdout
        assert json.loads((tmp_path / "status.json").read_text())["status"] == "preempted"
    else:
        assert first.returncode == -signal.SIGKILL
    again = _run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    # resumed, not redone: the stages finished before the interruption are not trained again
    assert f"[{resumed}] stage complete" in log, log[-3000:]
    assert f"[{resumed}] epoch  1/30" not in log
    assert "resuming stage" in log
    assert _metrics(tmp_path / "metrics.json") == _metrics(pipeline_reference / "metrics.json")


@pytest.mark.slow
def test_vmap_group_resumes_after_kill_bitwise(tmp_path):
    ref = tmp_path / "ref"
    proc = _run("--multirun", f"hydra.sweep.dir={ref}", *SWEEP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = _sweep_metrics(ref)
    assert len(reference) == 4

    run = tmp_path / "run"
    args = ("--multirun", f"hydra.sweep.dir={run}", *SWEEP)
    groups = run / ".vmap-groups"
    proc = subprocess.Popen(
        _cmd(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while not list(groups.glob("*/checkpoints/30/_CHECKPOINT_METADATA")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.kill()
    proc.communicate()
    again = _run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "resuming from" in log and "epoch 1/120" not in log
    assert _sweep_metrics(run) == reference


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, inside MLflow's store
def test_vmap_diverging_member_fails_alone(tmp_path):
    proc = _run(
        "--multirun",
        f"hydra.sweep.dir={tmp_path}",
        "trainer.devices=1",
        "hydra/launcher=vmap",
        "optim=sgd",
        "optim.lr=0.1,1e4",
        "model.output_activation=linear",
        "trainer.epochs=20",
        "trainer.figures=false",
        "logger=mlflow",
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    assert "Traceback" not in log
    from mlflow.tracking import MlflowClient

    for job, ended in (("0", "FINISHED"), ("1", "FAILED")):  # it was FINISHED for both
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / job / 'mlflow.db'}")
        (run,) = client.search_runs([client.get_experiment_by_name("ae-jax").experiment_id])
        assert run.info.status == ended, job
    status = json.loads((tmp_path / "1" / "status.json").read_text())
    assert status["status"] == "failed"
    # named by its job (it said "member 1", its place in the program, which is not the job's
    # number in general), without its own directory in its own status.json
    assert status["error"].startswith("TrainingDiverged: non-finite loss (")
    assert "global step" in status["error"]
    assert status["error"].endswith(  # its own rate, and where to run the fix
        "Lower optim.lr (now 10000.0), or set optim.grad_clip; then run it in a new directory "
        "(or with trainer.resume=false)"
    )
    assert json.loads((tmp_path / "0" / "status.json").read_text())["status"] == "completed"
    assert (tmp_path / "0" / "metrics.json").exists() and not (
        tmp_path / "1" / "metrics.json"
    ).exists()
    assert (
        f"{tmp_path / '1'}: non-finite loss" in log and "losses 0 " in log and ", 1 failed" in log
    )


def test_multirun_bad_value_is_one_line_and_exit_2(tmp_path):
    proc = _run(
        "--multirun",
        f"hydra.sweep.dir={tmp_path}",
        "trainer.devices=1",
        "trainer.epochs=2",
        "trainer.figures=false",
        "data.validation=0.1,5000",
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    assert "Traceback" not in log
    assert "data.validation=5000 holds out 5000 of the 1437 training examples" in log
    assert json.loads((tmp_path / "0" / "status.json").read_text())["status"] == "completed"
    assert json.loads((tmp_path / "1" / "status.json").read_text())["status"] == "failed"


# ---------------------------------------------------------------------------- the run directory
def _snapshot(d: Path) -> dict:
    """Every file of a run except its log and lock: path -> sha256."""
    return {
        p.relative_to(d): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name not in ("train.log", ".lock")
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    d = tmp_path_factory.mktemp("finished") / "run"
    proc = _run(f"hydra.run.dir={d}", "trainer.devices=1", "trainer.epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ("optim.lr=1e-2", "noise=masking", "noise.level=0.5", "trainer.epochs=10"),
            "optim.lr: 0.001 -> 0.01",
        ),
        (("model.latent_dim=4",), "model.latent_dim: 8 -> 4"),
        (("trainer.batch_size=5000",), "trainer.batch_size: 64 -> 5000"),
        (("trainer.epochs=2",), "trainer.epochs: 3 -> 2"),
        (("optim.lr=-1",), "optim.lr=-1"),
    ],
)
def test_a_refused_rerun_changes_nothing(finished, overrides, message):
    before = _snapshot(finished)
    run_log = (finished / "train.log").read_bytes()
    proc = _run(f"hydra.run.dir={finished}", "trainer.devices=1", "trainer.epochs=3", *overrides)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    assert message in log and "Traceback" not in log
    if "->" in message:
        assert "trainer.resume=false" in log  # the way out
    assert _snapshot(finished) == before
    assert (finished / "train.log").read_bytes() == run_log  # not even the refusal's lines


@pytest.mark.parametrize("launcher", ["basic", "vmap"])
def test_a_multirun_rerun_with_a_changed_value_is_refused_before_any_job(tmp_path, launcher):
    # The same sweep directory, one value changed: that job's directory holds the earlier run,
    # which stays as it was. The job used to be refused when its turn came, after the others
    # had trained and the rerun had rewritten multirun.yaml, from which the report then read
    # a grid the runs did not hold ("0.2: not started" beside the 0.1 run). Now the rerun is
    # refused before any job, naming the job; appending values to the key trains the new
    # ones only, and a rerun of the same grid trains nothing again.
    grid = ("--multirun", f"hydra.sweep.dir={tmp_path}", f"hydra/launcher={launcher}")
    fixed = ("trainer.devices=1", "trainer.epochs=3", "trainer.figures=false", "noise=masking")
    first = _run(*grid, *fixed, "noise.level=0,0.1")
    assert first.returncode == 0, first.stderr[-3000:]

    def files() -> dict:  # the lock names its last holder
        return {p: h for p, h in _snapshot(tmp_path).items() if p.name != ".sweep.lock"}

    before = files()
    proc = _run(*grid, *fixed, "noise.level=0,0.2,0.3")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in log, log[-3000:]
    said = f"hydra.sweep.dir={tmp_path}: this sweep gives job 1 (noise.level: 0.1 -> 0.2)"
    assert f"RunDirError: {said}" in log and "Use a new hydra.sweep.dir" in log, log[-3000:]
    assert "epoch 1/3" not in log and not (tmp_path / "2").exists()
    assert files() == before  # multirun.yaml and every run's files as they were
    proc = _run(*grid, *fixed, "noise.level=0,0.1,0.3")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and log.count("epoch 1/3") == 1, log[-3000:]
    assert "not trained again" in log
    assert json.loads((tmp_path / "2" / "status.json").read_text())["status"] == "completed"


def test_a_grid_rerun_that_renumbers_its_jobs_is_refused_before_any_job(tmp_path):
    # Hydra numbers jobs by the places of their values. A seed added to the second key made
    # job 1 (noise 0.2, seed 0) come back as job 2: it trained again beside the first copy,
    # which a report counted twice, while the new job 1 was refused by the directory it found.
    grid = ("--multirun", f"hydra.sweep.dir={tmp_path}")
    fixed = ("trainer.devices=1", "trainer.epochs=3", "trainer.figures=false", "noise=masking")
    first = _run(*grid, *fixed, "noise.level=0.1,0.2", "trainer.seed=0")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {n: _snapshot(tmp_path / n) for n in ("0", "1")}
    proc = _run(*grid, *fixed, "noise.level=0.1,0.2", "trainer.seed=0,1")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in log, log[-3000:]
    said = (
        f"RunDirError: hydra.sweep.dir={tmp_path}: this sweep would train noise.level=0.2 "
        f"trainer.seed=0 again as job 2, while {tmp_path / '1'} holds it"
    )
    assert said in log and "append values to the first swept key only" in log, log[-3000:]
    assert "epoch 1/3" not in log and not (tmp_path / "2").exists()
    assert {n: _snapshot(tmp_path / n) for n in ("0", "1")} == before
    # appending to the first key keeps the numbers: only the new job trains
    proc = _run(*grid, *fixed, "noise.level=0.1,0.2,0.3", "trainer.seed=0")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and log.count("epoch 1/3") == 1, log[-3000:]
    assert json.loads((tmp_path / "2" / "status.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("inside", ["", "sweeps"])
def test_a_sweep_in_a_run_directory_or_below_it_is_refused(finished, inside):
    # It used to start: its multirun.yaml, lock and jobs 0/, 1/ among the run's files, and a
    # report of the enclosing sweep then counted them as its own runs.
    before = _snapshot(finished)
    folders = sorted(p for p in finished.rglob("*") if p.is_dir())
    root = finished / inside if inside else finished
    proc = _run("--multirun", f"hydra.sweep.dir={root}", "trainer.epochs=2", "optim.lr=1e-3,1e-2")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in log, log[-3000:]
    said = "is a run's directory" if not inside else f"is inside {finished}, the directory of a run"
    assert f"RunDirError: hydra.sweep.dir={root} {said}" in log, log[-3000:]
    assert "choose a hydra.sweep.dir outside it" in log and "epoch 1/2" not in log
    assert _snapshot(finished) == before and not (finished / "multirun.yaml").exists()
    # nor an empty sweep directory among the run's files (it was made to check it)
    assert sorted(p for p in finished.rglob("*") if p.is_dir()) == folders


@pytest.mark.parametrize("damage", ["", "{[", "[]"])
def test_a_run_without_a_readable_config_is_refused_not_resumed(finished, tmp_path, damage):
    # Without config.yaml the checkpoint could tell a change of shapes (model.depth) but not
    # of a learning rate or an activation: another config went on with the run's checkpoints
    # and recorded itself as that run. A missing, unparsable or empty config.yaml is refused.
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(finished, d)
    if damage:
        (d / "config.yaml").write_text(damage)
    else:
        (d / "config.yaml").unlink()
    before = _snapshot(d)
    proc = _run(f"hydra.run.dir={d}", "trainer.devices=1", "trainer.epochs=6", "optim.lr=0.05")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in log, log[-3000:]
    said = "config.yaml is missing" if not damage else "config.yaml cannot be read"
    line = next(x for x in log.splitlines() if said in x)
    assert "restore it (Hydra's copy is .hydra/config.yaml)" in line, log[-3000:]
    assert "resuming from" not in log and _snapshot(d) == before


def test_extending_epochs_resumes_the_run(tmp_path):
    args = (f"hydra.run.dir={tmp_path}", "trainer.devices=1", "trainer.figures=false")
    assert _run(*args, "trainer.epochs=3").returncode == 0
    proc = _run(*args, "trainer.epochs=5", "trainer.log_every=1")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "resuming from" in log and "(epoch 3 of 5)" in log and "epoch 1/5" not in log
    history = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in history] == [1, 2, 3, 4, 5]
    elapsed = [json.loads(r)["time/elapsed"] for r in history]
    assert elapsed == sorted(elapsed), elapsed  # both sessions' training time: no restart at 0


def test_extending_epochs_resumes_a_vmap_sweep_and_equals_the_longer_sweep(tmp_path):
    # the group's checkpoint is found again with more epochs (its key leaves trainer.epochs
    # out) and the members go on from it, as a single run does; also in a sweep directory
    # moved since (the key named the members' absolute paths: it trained from epoch 1)
    grid = ("--multirun", "hydra/launcher=vmap", "trainer.figures=false", "trainer.log_every=1")
    grid += ("noise=masking", "noise.level=0,0.2")
    first = tmp_path / "first"
    assert _run(*grid, f"hydra.sweep.dir={first}", "trainer.epochs=3").returncode == 0
    first.rename(tmp_path / "a")
    proc = _run(*grid, f"hydra.sweep.dir={tmp_path / 'a'}", "trainer.epochs=5")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "(epoch 3 of 5)" in log and "epoch 1/5" not in log and "epoch 4/5" in log
    history = (tmp_path / "a" / "1" / "history.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in history] == [1, 2, 3, 4, 5]
    assert _run(*grid, f"hydra.sweep.dir={tmp_path / 'b'}", "trainer.epochs=5").returncode == 0
    assert _sweep_metrics(tmp_path / "a") == _sweep_metrics(tmp_path / "b")


def test_an_interrupted_vmap_group_rerun_with_other_values_or_fewer_epochs_is_refused(tmp_path):
    # A group killed at epoch 100 of 600 (its members' directories hold no result yet, their
    # checkpoints are the group's, in .vmap-groups/). Run again with 50 epochs, it used to be
    # reported as a finished 50-epoch run with 100 epochs of training, and later refused only
    # after rewriting the members' config.yaml; with its values swapped, it resumed the
    # members' states under each other's labels (lr 1e-3's training in the lr 1e-2 job). Both
    # are refused before anything is written, naming the values; 600 epochs then continue it.
    fixed = ("--multirun", "hydra/launcher=vmap", "trainer.figures=false", "noise=masking")
    fixed += ("trainer.checkpoint_every=50", f"hydra.sweep.dir={tmp_path}")
    grid = (*fixed, "noise.level=0,0.2")
    ready = ".vmap-groups/*/checkpoints/100/_CHECKPOINT_METADATA"
    proc = _started((*grid, "trainer.epochs=600"), tmp_path, ready)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=300)
    before = {job: _snapshot(tmp_path / job) for job in ("0", "1")}
    short = _run(*grid, "trainer.epochs=50")
    log = short.stdout + short.stderr
    assert short.returncode == 2 and "Traceback" not in log, log[-3000:]
    assert "holds a run with another config: trainer.epochs: 600 -> 50" in log, log[-3000:]
    assert "Use a new hydra.sweep.dir" in log and "epoch 1/50" not in log
    swapped = _run(*fixed, "noise.level=0.2,0", "trainer.epochs=600")
    log = swapped.stdout + swapped.stderr
    assert swapped.returncode == 2 and "Traceback" not in log, log[-3000:]
    # refused before any job, as a grid whose jobs changed numbers
    said = "this sweep would train noise.level=0.2 again as job 0 in place of noise.level=0,"
    assert said in log and f"while {tmp_path / '1'} holds it" in log, log[-3000:]
    assert "resuming from" not in log and "epoch 1/600" not in log
    assert {job: _snapshot(tmp_path / job) for job in ("0", "1")} == before
    assert not list(tmp_path.glob("*/metrics.json"))
    # Run again without the vmap launcher, each job trained alone from epoch 1 beside the
    # group's checkpoint. Now refused: only the group resumes its members.
    basic = _run(*[a for a in grid if a != "hydra/launcher=vmap"], "trainer.epochs=600")
    log = basic.stdout + basic.stderr
    assert basic.returncode == 2 and "Traceback" not in log, log[-3000:]
    assert "was stopped before it finished" in log and "hydra/launcher=vmap" in log, log[-3000:]
    assert "epoch 1/600" not in log
    assert {job: _snapshot(tmp_path / job) for job in ("0", "1")} == before
    resumed = _run(*grid, "trainer.epochs=600")
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0 and "of 600)" in log and "resuming from" in log, log[-3000:]


def test_a_finished_vmap_sweep_rerun_without_its_launcher_is_not_trained_again(tmp_path):
    # Each job, trained alone, found no checkpoint of its own (a member's are its group's)
    # and trained again from epoch 1, rewriting the member's results.
    grid = ("--multirun", f"hydra.sweep.dir={tmp_path}", "trainer.figures=false")
    grid += ("trainer.devices=1", "noise=masking", "noise.level=0,0.2", "trainer.epochs=30")
    first = _run(*grid, "hydra/launcher=vmap")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {job: _snapshot(tmp_path / job) for job in ("0", "1")}
    again = _run(*grid)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    assert log.count("completed by a vectorised sweep: not trained again") == 2, log[-3000:]
    assert "epoch 1/30" not in log
    assert {job: _snapshot(tmp_path / job) for job in ("0", "1")} == before
    # more epochs would extend the members: only their group can
    longer = _run(*grid, "trainer.epochs=60")
    log = longer.stdout + longer.stderr
    assert longer.returncode == 2 and "Traceback" not in log, log[-3000:]
    assert "completed with other epochs" in log and "epoch 1/60" not in log, log[-3000:]
    assert {job: _snapshot(tmp_path / job) for job in ("0", "1")} == before
    # trainer.resume=false trains a job alone all the same, as the line says
    alone = _run(*grid, "trainer.resume=false", "noise.level=0.2")
    assert alone.returncode == 0 and "epoch 30/30" in alone.stdout + alone.stderr


def test_a_pipeline_rerun_with_new_supervised_settings_reuses_every_other_stage(tmp_path):
    # A supervised stage that diverged could only be fixed in a new directory, training the
    # layers and the fine-tuning again: a changed pretrain.supervised_* was "another config"
    run = tmp_path / "pipeline"
    args = (f"hydra.run.dir={run}", *PIPELINE, "pretrain.layer_epochs=3")
    args += ("trainer.epochs=3", "pretrain.supervised_epochs=3", "logger=[tensorboard,mlflow]")
    first = _run(*args, "pretrain.supervised_lr=1e-3", "pretrain.supervised_epochs=4")
    assert first.returncode == 0, first.stderr[-3000:]
    before = _metrics(run / "metrics.json")
    again = _run(*args, "pretrain.supervised_lr=3e-3", "pretrain.probe=true")
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    assert "pretrain.probe: false -> true; pretrain.supervised_epochs: 4 -> 3; " in log
    assert "pretrain.supervised_lr: 0.001 -> 0.003: stage " in log
    assert "supervised trains again (earlier checkpoints and results kept as <stage>/chec" in log
    for stage in ("pretrain/layer_0", "pretrain/layer_2", "finetune"):
        assert f"[{stage}] stage complete" in log and f"[{stage}] epoch" not in log, stage
    assert "[supervised] epoch 1/3" in log
    after = _metrics(run / "metrics.json")
    assert after["test/mse"] == before["test/mse"]  # the same deep AE, reused
    assert after["supervised/test/error_pct"] != before["supervised/test/error_pct"]
    assert "probe/error_pct" in after
    [kept] = (run / "supervised").glob("checkpoints-before-*")  # with the results they gave
    assert sorted(p.name for p in kept.iterdir()) == [
        "4", "history.csv", "history.jsonl", "params.msgpack"
    ]  # fmt: skip
    [old] = run.glob("metrics-before-*.json")
    assert _metrics(old) == before
    # The trackers: the rerun's are new runs, the earlier ones kept as they were. They used
    # to go on in the earlier runs: TensorBoard drew the stage's epochs 1-3 twice, once per
    # config, and MLflow skipped the new epochs as logged already and kept the old params.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def steps(logdir: Path, tag: str = "supervised/train/loss") -> list[int]:
        events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
        events.Reload()
        return [s.step for s in events.Scalars(tag)]

    [earlier] = (run / "tensorboard").glob("before-*")
    assert steps(earlier) == [1, 2, 3, 4] and steps(run / "tensorboard") == [1, 2, 3]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ae-jax").experiment_id])
    new, old = sorted(runs, key=lambda r: -r.info.start_time)
    assert new.data.tags["ae_jax.follows"] == old.info.run_id
    lrs = [r.data.params["pretrain.supervised_lr"] for r in (new, old)]
    assert lrs == ["0.003", "0.001"]
    history = {r: client.get_metric_history(r.info.run_id, "supervised/train/loss") for r in runs}
    assert [m.step for m in history[new]] == [1, 2, 3] and len(history[old]) == 4
    # a setting an earlier stage reads is another run, as before
    other = _run(*args, "pretrain.supervised_lr=3e-3", "pretrain.layer_epochs=4")
    said = other.stdout + other.stderr
    assert other.returncode == 2 and "holds a run with another config" in said, said[-3000:]
    # without pretraining no pretrain.* setting is read: the run is reused
    plain = (f"hydra.run.dir={tmp_path / 'plain'}", "trainer.devices=1", "trainer.epochs=2")
    assert _run(*plain).returncode == 0
    reused = _run(*plain, "pretrain.supervised_lr=0.5")
    said = reused.stdout + reused.stderr
    assert reused.returncode == 0 and "which nothing it trained depends on: it is reused" in said


def test_a_sweep_job_finished_by_hand_stays_the_sweeps_job(tmp_path):
    # A single run pointed at a sweep's job directory (to finish or resume one job by hand)
    # rewrote the job's .hydra/ record as a single run's: mode RUN, job number 0, and the
    # overrides as typed, which the sweep's report and a relaunch of the sweep read.
    grid = ("--multirun", f"hydra.sweep.dir={tmp_path}", "trainer.figures=false")
    first = _run(
        *grid, "trainer.devices=1", "trainer.epochs=3", "noise=masking", "noise.level=0,0.1"
    )
    assert first.returncode == 0, first.stderr[-3000:]
    record = {p.name: p.read_bytes() for p in (tmp_path / "1" / ".hydra").iterdir()}
    by_hand = _run(
        f"hydra.run.dir={tmp_path / '1'}", "trainer.devices=1", "trainer.epochs=3",
        "trainer.figures=false", "noise=masking", "noise.level=0.10", "trainer.log_every=1",
    )  # fmt: skip
    assert by_hand.returncode == 0, by_hand.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in (tmp_path / "1" / ".hydra").iterdir()} == record
    again = _run(
        *grid, "trainer.devices=1", "trainer.epochs=3", "noise=masking", "noise.level=0,0.1"
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]


def test_trainer_resume_false_keeps_the_earlier_vmap_sweep_and_writes_beside_it(tmp_path):
    # Under hydra/launcher=vmap, trainer.resume=false (the way out a refusal names) trained
    # the jobs in their earlier directories, over the runs it promised to keep
    grid = ("--multirun", f"hydra.sweep.dir={tmp_path}", "trainer.devices=1", "trainer.epochs=3")
    grid += ("trainer.figures=false", "optim.lr=0.001,0.003", "hydra/launcher=vmap")
    assert _run(*grid).returncode == 0
    before = {job: _snapshot(tmp_path / job) for job in ("0", "1")}
    logs = {job: (tmp_path / job / "train.log").read_bytes() for job in ("0", "1")}
    again = _run(*grid, "optim.schedule=cosine", "trainer.resume=false")
    said = again.stdout + again.stderr
    assert again.returncode == 0, said[-3000:]
    assert {job: _snapshot(tmp_path / job) for job in ("0", "1")} == before
    assert {job: (tmp_path / job / "train.log").read_bytes() for job in ("0", "1")} == logs
    fresh = sorted(p for p in tmp_path.iterdir() if "-fresh-" in p.name)
    assert [p.name.split("-")[0] for p in fresh] == ["0", "1"], said[-3000:]
    for d in fresh:
        assert json.loads((d / "status.json").read_text())["status"] == "completed"
        assert (
            "cosine" in (d / "config.yaml").read_text()
            and "epoch 3/3" in (d / "train.log").read_text()
        )
    # the multirun's summary counts its own 2 jobs, not the 2 earlier runs kept beside them
    assert "multirun " in said and f"{tmp_path}: 2 completed" in said, said[-3000:]
    alone = _run(*grid[:-1], "trainer.resume=false")  # one job after the other, likewise
    said = alone.stdout + alone.stderr
    assert alone.returncode == 0 and f"{tmp_path}: 2 completed" in said, said[-3000:]


def test_a_vmap_member_refused_before_it_trains_fails_the_multirun(tmp_path):
    # the summary counts the jobs this multirun ran, and a member refused before its
    # directory was chosen is one of them: it was left out, and the multirun exited 0
    grid = ("--multirun", f"hydra.sweep.dir={tmp_path}", "trainer.devices=1", "trainer.epochs=2")
    refused = _run(*grid, "trainer.figures=false", "model.sparse_k=4,9", "hydra/launcher=vmap")
    said = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "1 completed, 1 failed" in said, said[-3000:]
    assert "model.sparse_k=9 is larger than the code" in said


def test_a_vmap_group_whose_members_all_diverged_stops(tmp_path):
    # it trained on to its last epoch with no member left (the whole budget, on MNIST)
    grid = ("--multirun", f"hydra.sweep.dir={tmp_path}", "trainer.devices=1", "trainer.epochs=300")
    proc = _run(*grid, "trainer.figures=false", "optim.lr=1e3,2e3", "hydra/launcher=vmap")
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "multirun" in said and ": 2 failed" in said, said[-3000:]
    assert "every member of the group diverged: stopped after epoch" in said, said[-3000:]
    assert "epoch 300/300" not in said


def test_a_vmap_group_regrouped_by_new_values_says_why_it_trains_from_epoch_1(tmp_path):
    # a value added and more epochs: the members form a new group with no checkpoint of its
    # own, and it trained from epoch 1 without a word (its results are right)
    grid = ("--multirun", f"hydra.sweep.dir={tmp_path}", "trainer.devices=1")
    grid += ("trainer.figures=false", "hydra/launcher=vmap")
    assert _run(*grid, "optim.lr=0.001,0.003", "trainer.epochs=3").returncode == 0
    again = _run(*grid, "optim.lr=0.001,0.003,0.01", "trainer.epochs=5")
    said = again.stdout + again.stderr
    assert again.returncode == 0, said[-3000:]
    assert (
        f"vectorised sweep: {tmp_path / '0'}, {tmp_path / '1'} held earlier runs, and this group "
        "of 3 has no checkpoint" in said
    ), said[-3000:]


def test_training_time_is_kept_across_resumption_and_a_finished_rerun(tmp_path):
    # The checkpoint carries the stage's training seconds: a rerun of a finished run reports
    # the time it trained (not 0), and a resumed run the time of both sessions.
    args = (f"hydra.run.dir={tmp_path}", "trainer.devices=1", "trainer.figures=false")
    assert _run(*args, "trainer.epochs=20").returncode == 0
    first = json.loads((tmp_path / "metrics.json").read_text())
    assert _run(*args, "trainer.epochs=20").returncode == 0  # finished: not trained again
    rerun = json.loads((tmp_path / "metrics.json").read_text())
    assert rerun["time/train_seconds"] == pytest.approx(first["time/train_seconds"], rel=1e-6)
    assert rerun["train/samples_per_second"] == pytest.approx(
        first["train/samples_per_second"], rel=1e-6
    )
    assert _run(*args, "trainer.epochs=30").returncode == 0  # resumed at epoch 20
    extended = json.loads((tmp_path / "metrics.json").read_text())
    assert extended["time/train_seconds"] > first["time/train_seconds"]


def _hold(workdir: Path) -> subprocess.Popen:
    """A process that claims ``workdir`` as a run starting there does (its lock, then its
    status.json says running, no checkpoint yet) and holds it."""
    workdir.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, time; from ae_jax.training.rundir import RunDir; "
            f"d = pathlib.Path({str(workdir)!r}); RunDir(d).claim({{}}); "
            "(d / 'status.json').write_text('{\"status\": \"running\"}'); "
            "print('held', flush=True); time.sleep(300)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_directory_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path):
    holder = _hold(tmp_path)
    (tmp_path / "train.log").write_text("the running run's lines\n")
    args = (f"hydra.run.dir={tmp_path}", "trainer.devices=1", "trainer.epochs=2")
    proc = _run(*args)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    assert f"in use by pid {holder.pid}" in log and "Traceback" not in log
    # the running run's status stays its own (it used to be overwritten with "failed"), and
    # its log too (the refused process wrote its lines, its refusal among them, into it)
    assert json.loads((tmp_path / "status.json").read_text()) == {"status": "running"}
    assert (tmp_path / "train.log").read_text() == "the running run's lines\n"
    holder.kill()  # SIGKILL: the lock file stays behind, its flock does not
    holder.wait()
    assert (tmp_path / ".lock").exists()
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "completed"


def test_a_sweep_job_whose_directory_is_in_use_is_refused_alone_and_left_as_it_is(tmp_path):
    # another process runs in job 0's directory: under the vmap launcher that job alone is
    # refused (listed as such), its status.json untouched, and job 1 trains
    holder = _hold(tmp_path / "0")
    try:
        grid = ("--multirun", "hydra/launcher=vmap", f"hydra.sweep.dir={tmp_path}")
        proc = _run(*grid, "trainer.figures=false", "trainer.epochs=2", "trainer.seed=0,1")
    finally:
        holder.kill()
        holder.wait()
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in log, log[-3000:]
    assert f"{tmp_path / '0'}: RunDirInUse: {tmp_path / '0'} is in use by pid {holder.pid}" in log
    summary = log.split(f"multirun {tmp_path}:")[1].splitlines()[0]
    assert "1 completed" in summary and "1 refused" in summary, summary
    assert json.loads((tmp_path / "0" / "status.json").read_text()) == {"status": "running"}
    assert json.loads((tmp_path / "1" / "status.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("where", ["run", "checkpoints", "long"])
def test_an_unwritable_path_stops_before_training(tmp_path, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    if where == "long":  # a name longer than the filesystem's 255 bytes: it was a traceback
        run_dir = tmp_path / ("x" * 300)
    elif where == "run":
        run_dir = blocker / "run"
    else:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        (run_dir / "checkpoints").write_text("not a directory")
    proc = _run(f"hydra.run.dir={run_dir}", "trainer.devices=1", "trainer.epochs=2")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    assert "Traceback" not in log and "epoch 1/2" not in log
    if where == "run":  # refused before Hydra starts, naming the file in the way
        assert f"({blocker} is a file); choose a writable directory" in log
    elif where == "long":
        assert "cannot be created (File name too long); choose a writable directory" in log
    else:
        assert "Not a directory" in log or "not writable" in log
    assert os.fspath(run_dir) in log


@pytest.mark.parametrize("launcher", ["basic", "vmap"])
def test_a_job_whose_directory_cannot_take_its_files_fails_alone(tmp_path, launcher):
    """Job 1's train.log cannot be opened (a directory there) nor its .hydra/ record written
    (a file there), and its value is refused: the whole multirun stopped with a traceback,
    Hydra's opening the log (basic launcher) or ours writing the record (vmap), and job 0
    never trained."""
    (tmp_path / "1" / "train.log").mkdir(parents=True)
    (tmp_path / "1" / ".hydra").write_text("not a directory")
    proc = _run(
        "--multirun",
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={tmp_path}",
        "model.latent_dim=8,0",
        "trainer.devices=1",
        "trainer.epochs=2",
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in log, log[-3000:]
    if launcher == "basic":  # the lines a job logs go to its train.log, once it is open
        assert f"{tmp_path / '1' / 'train.log'} cannot be opened (Is a directory)" in log
    assert "model.latent_dim=0 is not valid" in log.split(f"multirun {tmp_path}: ")[1]
    assert json.loads((tmp_path / "0" / "status.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("multirun", [False, True])
def test_a_default_output_directory_that_cannot_be_created_is_one_line(tmp_path, multirun):
    # run from a directory where the default outputs/ (multirun/) is a file: Hydra would stop
    # with a traceback opening its train.log
    top = "multirun" if multirun else "outputs"
    (tmp_path / top).write_text("not a directory")
    args = ["--multirun", "trainer.seed=0,1"] if multirun else []
    cmd = [sys.executable, str(Path(REPO) / "experiments" / "train.py"), *args, "trainer.epochs=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    assert "Traceback" not in log and "HYDRA_FULL_ERROR" not in log, log[-3000:]
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    assert f"error: the default {key} ({top}/" in log
    assert f"({top} is a file); choose a writable directory ({key}=...)" in log


def test_a_second_multirun_on_a_sweep_directory_is_refused(tmp_path):
    # The first multirun holds <sweep>/.sweep.lock from before its first job: a second one on
    # the same directory is refused at once, instead of training the jobs the first has not
    # reached yet beside it.
    args = ("--multirun", f"hydra.sweep.dir={tmp_path}", "trainer.devices=1", "trainer.seed=0,1")
    long = (*args, "trainer.epochs=100000", "trainer.checkpoint_every=200")
    first = _started(long, tmp_path, "0/checkpoints/*/_CHECKPOINT_METADATA")
    assert (tmp_path / ".sweep.lock").read_text().startswith(f"pid {first.pid} ")
    second = _run(*args, "trainer.epochs=2")
    log = second.stdout + second.stderr
    assert second.returncode == 2, log[-3000:]
    assert f"sweep directory {tmp_path} is in use by pid {first.pid}" in log
    assert "Traceback" not in log and "hydra.sweep.dir" in log
    assert not (tmp_path / "1").exists()  # no job of the second multirun began
    # Ctrl-C stops the first like SIGTERM: the epoch in flight is checkpointed, the sweep stops
    # (exit status 130, as a shell expects of Ctrl-C: it was 0, and `... && next` went on),
    # and says where its jobs stand (it said nothing)
    first.send_signal(signal.SIGINT)
    out = first.communicate(timeout=300)[0]
    assert first.returncode == 130, out[-3000:]
    status = json.loads((tmp_path / "0" / "status.json").read_text())
    assert status["status"] == "interrupted" and status["message"].startswith("Ctrl-C: saved")
    assert "Traceback" not in out and not (tmp_path / "1").exists()
    assert f"multirun {tmp_path} stopped by Ctrl-C: 1 interrupted, 1 not started; the same " in out


def test_ctrl_c_checkpoints_and_the_run_resumes_bitwise(tmp_path):
    base = ("trainer.devices=1", "trainer.epochs=400", "trainer.checkpoint_every=20")
    ref = _run(f"hydra.run.dir={tmp_path / 'ref'}", *base)
    assert ref.returncode == 0, ref.stderr[-3000:]
    args = (f"hydra.run.dir={tmp_path / 'run'}", *base)
    first = _interrupt(args, tmp_path / "run" / "checkpoints" / "20", signal.SIGINT)
    assert first.returncode == 130, first.stdout[-3000:]
    assert "Ctrl-C: saved epoch" in first.stdout and "Traceback" not in first.stdout
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "interrupted"
    again = _run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "resuming from" in log and "epoch   1/400" not in log
    assert _metrics(tmp_path / "run" / "metrics.json") == _metrics(
        tmp_path / "ref" / "metrics.json"
    )


def test_a_rerun_on_changed_data_is_refused_not_resumed(tmp_path, caplog):
    """The same config on a data file whose values changed used to resume the earlier run's
    checkpoint on the new data; the fingerprint in run.json refuses it (single runs and vmap
    groups), leaving the earlier run's files as they were, and the restored data resumes."""
    import logging

    import numpy as np
    from conftest import make_config

    from ae_jax.sweeps.vectorized import train_vectorized
    from ae_jax.train import train_and_evaluate
    from ae_jax.training.rundir import RunDirError

    table = np.random.default_rng(0).normal(size=(120, 6))
    csv = tmp_path / "table.csv"
    np.savetxt(csv, table, delimiter=",")
    data = ("data=array", f"data.path={csv}", "trainer.batch_size=32")
    run = tmp_path / "run"
    train_and_evaluate(make_config(*data, "trainer.epochs=2"), run)
    group = [tmp_path / "m0", tmp_path / "m1"]
    members = [make_config(*data, "trainer.epochs=2", f"trainer.seed={s}") for s in (0, 1)]
    train_vectorized(members, group)
    before = {p: p.read_bytes() for d in (run, *group) for p in sorted(d.glob("*.json"))}

    changed = table.copy()
    changed[:3] *= 2.0  # three rows of the same file: same shapes, same config
    np.savetxt(csv, changed, delimiter=",")
    refusal = r"holds a run that trained on other data: /\S*/table.csv has changed since"
    with pytest.raises(RunDirError, match=refusal):
        train_and_evaluate(make_config(*data, "trainer.epochs=4"), run)
    with pytest.raises(RunDirError, match=refusal):
        train_vectorized(members, group)
    assert {p: p.read_bytes() for p in before} == before  # nothing written over

    np.savetxt(csv, table, delimiter=",")  # the data restored: the run goes on from epoch 2
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        train_and_evaluate(make_config(*data, "trainer.epochs=4"), run)
    assert "(epoch 2 of 4)" in caplog.text
    assert len((run / "history.jsonl").read_text().splitlines()) == 4


def test_a_run_directory_inside_another_run_or_holding_one_is_refused(tmp_path):
    # A directory holding another run's was told its config.yaml was missing (that run's
    # checkpoints read as its own); one inside a finished run was accepted, and a report of
    # the outer directory then counted the inner run as the outer one.
    child = tmp_path / "parent" / "child"
    first = _run(f"hydra.run.dir={child}", "trainer.devices=1", "trainer.epochs=3")
    assert first.returncode == 0, first.stderr[-3000:]
    before = _snapshot(child)
    outer = _run(f"hydra.run.dir={tmp_path / 'parent'}", "trainer.devices=1", "trainer.epochs=3")
    log = outer.stdout + outer.stderr
    assert outer.returncode == 2 and "Traceback" not in log, log[-3000:]
    assert f"{tmp_path / 'parent'} holds {child}, the directory of another run" in log, log
    assert sorted(p.name for p in (tmp_path / "parent").iterdir()) == ["child"]  # no trace
    inner = child / "inner"
    nested = _run(f"hydra.run.dir={inner}", "trainer.devices=1", "trainer.epochs=3")
    log = nested.stdout + nested.stderr
    assert nested.returncode == 2 and "Traceback" not in log, log[-3000:]
    assert f"{inner} is inside {child}, the directory of another run" in log, log[-3000:]
    assert not inner.exists() and _snapshot(child) == before


def test_a_rerun_says_which_stages_train_again_and_which_it_turns_on(tmp_path, caplog):
    # "stage supervised, baseline/supervised trains again"; a stage turned on was "reused"
    # ("which nothing it trained depends on"), and the line printed Python's False -> True
    import logging

    from ae_jax.training.rundir import RunDir, config_differences

    (tmp_path / "supervised" / "checkpoints" / "4").mkdir(parents=True)
    (tmp_path / "baseline" / "supervised").mkdir(parents=True)
    # the earlier settings' results: a rerun stopped part-way left them beside the new config
    (tmp_path / "supervised" / "params.msgpack").write_bytes(b"earlier")
    (tmp_path / "metrics.json").write_text('{"supervised/test/error_pct": 3.61}')
    old = {"pretrain": {"supervised": True, "baseline": False, "supervised_lr": 1e-3}}
    new = {"pretrain": {"supervised": True, "baseline": True, "supervised_lr": 3e-3}}
    rundir = RunDir(tmp_path)
    rundir.changed = config_differences(old, new)
    rundir.redo = ("supervised", "baseline/supervised")
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        rundir._set_aside_stages()
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{tmp_path} holds this run with pretrain.baseline: false -> true; ")
    assert ": stages supervised, baseline/supervised train again (earlier checkpoints and" in line
    assert line.endswith(
        "the stages that pretrain.baseline=true turns on train; the other stages are reused"
    )
    assert list((tmp_path / "supervised").glob("checkpoints-before-*/4"))
    [kept] = (tmp_path / "supervised").glob("checkpoints-before-*/params.msgpack")
    assert (
        kept.read_bytes() == b"earlier"
        and not (tmp_path / "supervised" / "params.msgpack").exists()
    )
    [old_metrics] = tmp_path.glob("metrics-before-*.json")
    assert "3.61" in old_metrics.read_text() and not (tmp_path / "metrics.json").exists()


def test_more_epochs_refused_say_why_they_do_not_extend_the_run():
    # a single run with a constant rate is extended by more trainer.epochs; a pipeline, or a
    # schedule laid out over the epochs, was refused as "trainer.epochs: 2 -> 3" alone
    from ae_jax.training.rundir import config_differences

    plain = {"trainer": {"epochs": 2}, "optim": {"schedule": "constant"}}
    more = {"trainer": {"epochs": 3}, "optim": {"schedule": "constant"}}
    assert config_differences(plain, more) == []  # extended
    assert config_differences(more, plain) == ["trainer.epochs: 3 -> 2"]
    cosine = {**more, "optim": {"schedule": "cosine"}}
    [said] = config_differences({**plain, "optim": {"schedule": "cosine"}}, cosine)
    assert said == (
        "trainer.epochs: 2 -> 3 (more epochs extend a run with a constant learning rate and no "
        "layer-wise pretraining; here optim.schedule=cosine is laid out over the epochs)"
    )
    pipeline = {**more, "pretrain": {"enabled": True}}
    [said] = config_differences({**plain, "pretrain": {"enabled": True}}, pipeline)
    assert said.endswith("here the stages after the fine-tuning start from its end)")
