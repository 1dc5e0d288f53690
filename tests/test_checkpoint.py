"""Checkpoints and exact resume, tested the hard way: kill -9, SIGTERM, corrupted files, NaN.

Every scenario must end with parameters and metrics BITWISE equal to one uninterrupted run of the
same command (CPU), because a checkpoint holds the full state (params, optimiser, step, both RNG
keys) and the data order is a function of the data key and the epoch.
"""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, make_config

from ae_jax.data import load_dataset
from ae_jax.training.checkpoint import Checkpointer
from ae_jax.training.trainer import Trainer, TrainingDiverged

EPOCHS = 600
ARGS = (
    "trainer.devices=1",
    f"trainer.epochs={EPOCHS}",
    "trainer.checkpoint_every=20",
    "trainer.figures=false",
    "noise=masking",
    "noise.level=0.2",
)
TIMING = ("time/", "train/samples_per_second")


def _cmd(workdir, *extra):
    return [sys.executable, "experiments/train.py", f"hydra.run.dir={workdir}", *ARGS, *extra]


def _run(workdir, *extra):
    return subprocess.run(
        _cmd(workdir, *extra), cwd=REPO, capture_output=True, text=True, timeout=600
    )


def _metrics(workdir):
    m = json.loads((workdir / "metrics.json").read_text())
    return {k: v for k, v in m.items() if not k.startswith(TIMING)}


def _committed(workdir):
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.glob("*") if p.name.isdigit()) if d.exists() else []


def _start_and_wait_for_checkpoint(workdir, at_least):
    proc = subprocess.Popen(
        _cmd(workdir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        done = [e for e in _committed(workdir) if e >= at_least]
        if done and (workdir / "checkpoints" / str(done[0]) / "_CHECKPOINT_METADATA").exists():
            return proc
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the command."""
    workdir = tmp_path_factory.mktemp("reference")
    proc = _run(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def _assert_same_run(workdir, reference):
    assert (workdir / "params.msgpack").read_bytes() == (reference / "params.msgpack").read_bytes()
    assert _metrics(workdir) == _metrics(reference)


def test_kill_9_then_resume_is_bitwise_identical(tmp_path, reference):
    proc = _start_and_wait_for_checkpoint(tmp_path, at_least=40)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "metrics.json").exists(), "the run finished before it was killed"
    killed_at = _committed(tmp_path)[-1]
    assert killed_at < EPOCHS
    again = _run(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr + again.stdout
    assert "trained in " in again.stderr + again.stdout
    _assert_same_run(tmp_path, reference)
    # run once more: nothing is trained, and the line says the seconds are the earlier ones'
    # (it said "trained in ...; compile ..." with this session's compile time)
    finished = _run(tmp_path)
    said = finished.stderr + finished.stdout
    assert "trained earlier in " in said and "trained in " not in said, said[-3000:]
    _assert_same_run(tmp_path, reference)


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path, reference):
    proc = _start_and_wait_for_checkpoint(tmp_path, at_least=20)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM: saved epoch" in out
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "preempted"
    assert _committed(tmp_path)[-1] < EPOCHS
    again = _run(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_same_run(tmp_path, reference)


def _truncate_newest_state_file(checkpoint):
    files = sorted(
        (p for p in (checkpoint / "state").rglob("*") if p.is_file() and p.stat().st_size > 100),
        key=lambda p: p.stat().st_size,
    )
    victim = files[-1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, reference):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    (workdir / "metrics.json").unlink()
    (workdir / "params.msgpack").unlink()
    epochs = _committed(workdir)
    assert len(epochs) == 3  # trainer.keep_checkpoints
    _truncate_newest_state_file(workdir / "checkpoints" / str(epochs[-1]))
    proc = _run(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert (
        f"checkpoints/{epochs[-1]}" in log
        and f"resuming from {workdir}/checkpoints/{epochs[-2]}" in log
    )
    _assert_same_run(workdir, reference)


def test_no_valid_checkpoint_is_an_error_unless_asked_to_restart(tmp_path, reference):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    for e in _committed(workdir):
        _truncate_newest_state_file(workdir / "checkpoints" / str(e))
    (workdir / "metrics.json").unlink()
    proc = _run(workdir)
    assert proc.returncode == 2
    assert "no valid checkpoint" in proc.stdout + proc.stderr
    assert "trainer.restart_if_corrupt=true" in proc.stdout + proc.stderr
    proc = _run(workdir, "trainer.restart_if_corrupt=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(workdir, reference)


def test_resume_false_never_touches_the_earlier_run(tmp_path, reference):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    # everything the earlier run wrote (checkpoints, params, metrics, history, its .hydra/
    # record) must stay, its train.log too: the new run's lines went into it
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and p.name != ".lock"}
    proc = _run(workdir, "trainer.resume=false", "trainer.epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = [p for p in tmp_path.iterdir() if p.name.startswith("run-fresh-")]
    assert len(fresh) == 1 and (fresh[0] / "metrics.json").exists()
    for path, data in before.items():
        assert path.read_bytes() == data, path
    log = (fresh[0] / "train.log").read_text()
    assert "trainer.resume=false" in log and "epoch 3/3" in log, log


def test_divergence_names_the_last_good_checkpoint_and_never_overwrites_it(tmp_path):
    # the same optimiser (so the same state structure) first with a sane, then a wild rate
    good = make_config(
        "trainer.epochs=10",
        "trainer.checkpoint_every=5",
        "model.output_activation=linear",
        "optim=sgd",
        "optim.lr=0.1",
    )
    data = load_dataset(good.data)
    ckpt = Checkpointer(tmp_path / "checkpoints")
    trainer = Trainer(good, data)
    trainer.fit(trainer.init_state(), checkpointer=ckpt)
    saved = {p: p.read_bytes() for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()}

    bad = make_config(
        "trainer.epochs=30",
        "trainer.checkpoint_every=1",
        "optim=sgd",
        "optim.lr=1e4",
        "model.output_activation=linear",
    )
    trainer = Trainer(bad, data)
    state, epoch, history = Checkpointer(tmp_path / "checkpoints").restore_latest(
        trainer.init_state()
    )
    assert epoch == 10
    with pytest.raises(TrainingDiverged, match=r"last good checkpoint is .*checkpoints/10"):
        trainer.fit(
            state,
            start_epoch=epoch,
            history=history,
            checkpointer=Checkpointer(tmp_path / "checkpoints"),
        )
    after = {p: p.read_bytes() for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()}
    for path, data_ in saved.items():
        assert after.get(path) == data_, f"{path} was changed"
    # every checkpoint written before the divergence was detected holds finite parameters
    restored, _, _ = Checkpointer(tmp_path / "checkpoints").restore_latest(trainer.init_state())
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(restored.params))


def test_checkpoints_follow_training_time_when_checkpoint_every_is_null(tmp_path, monkeypatch):
    """The default schedule: a checkpoint once ``trainer.checkpoint_seconds`` of training have
    passed since the last (and one at the end), whatever the epochs last. The loop's clock is
    a fake one that each epoch advances, so the schedule is exact on a loaded machine too."""
    import types

    import jax.numpy as jnp

    from ae_jax.config import validate
    from ae_jax.training import loop
    from ae_jax.training.loop import Stage, checkpoint_schedule, run_stage

    assert validate(make_config()).trainer.checkpoint_every is None  # the default is by time
    clock = [0.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def written(seconds: float, epoch_seconds: float, epochs: int = 12) -> list[int]:
        def run_epoch(state, epoch):
            clock[0] += epoch_seconds
            return {"w": state["w"] + 1.0}, {"loss": jnp.zeros((2,)), "loss/rec": jnp.zeros((2,))}

        cfg = validate(make_config(f"trainer.checkpoint_seconds={seconds}"))
        stage = Stage(
            name="",
            epochs=epochs,
            run_epoch=run_epoch,
            steps_per_epoch=2,
            batch_size=1,
            progress=False,
            **checkpoint_schedule(cfg.trainer),
        )
        directory = tmp_path / f"s{seconds}"
        state = {"w": jnp.zeros((3,))}
        result = run_stage(stage, state, checkpointer=Checkpointer(directory, keep=100))
        assert float(result.state["w"][0]) == epochs
        return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit())

    # A short run writes its final checkpoint only (the digits default: 300 epochs in ~3 s).
    assert written(seconds=60.0, epoch_seconds=0.01) == [12]
    # Epochs of 0.1 s with a checkpoint due every 0.25 s: every third epoch, and the end.
    assert written(seconds=0.25, epoch_seconds=0.1) == [3, 6, 9, 12]
    # trainer.checkpoint_every, when set, is what counts.
    cfg = validate(make_config("trainer.checkpoint_every=4", "trainer.checkpoint_seconds=0.001"))
    assert checkpoint_schedule(cfg.trainer) == {"checkpoint_every": 4, "checkpoint_seconds": None}


def test_a_full_disk_refuses_the_checkpoint_before_orbax_writes_it(tmp_path, monkeypatch):
    from flax import serialization

    import ae_jax.training.checkpoint as ckpt

    state = {"w": np.arange(1000, dtype=np.float32), "step": np.int32(3)}
    ck = Checkpointer(tmp_path / "ck")
    ck.check_space(state)  # a real disk has room
    ck.save(1, state, [{"epoch": 1}])
    monkeypatch.setattr(ckpt, "free_bytes", lambda path: 1000)
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        ck.check_space(state, label="this run")
    line = str(err.value)
    assert line.startswith(f"{tmp_path / 'ck'} has 1000 B free, and this run needs at least ")
    assert "hydra.run.dir=" in line
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        ck.save(2, {**state, "w": state["w"] + 1}, [{"epoch": 1}, {"epoch": 2}])
    line = str(err.value)
    assert line.startswith(f"cannot write checkpoint {tmp_path / 'ck' / '2'} (No space left")
    assert "1000 B free" in line
    assert f"the same command resumes from {tmp_path / 'ck' / '1'}" in line
    # nothing half-written beside the good checkpoint, which is intact
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["1"]
    assert ck.epochs() == [1]
    # the state that could not be written is in the rescue file the line names
    rescue = line.split("was saved to ")[1].split(" instead")[0]
    restored = serialization.from_bytes(state, open(rescue, "rb").read())
    np.testing.assert_array_equal(restored["w"], state["w"] + 1)
    os.unlink(rescue)


def test_a_save_a_killed_session_left_unfinished_is_removed_on_resume(tmp_path):
    # Orbax leaves <epoch>.orbax-checkpoint-tmp* of a save that was cut short (a second
    # Ctrl-C while it wrote) in the checkpoint directory for good
    state = {"w": np.arange(10, dtype=np.float32)}
    Checkpointer(tmp_path / "ck").save(1, state, [{"epoch": 1}])
    cut = tmp_path / "ck" / "2.orbax-checkpoint-tmp-1765000000"
    (cut / "state").mkdir(parents=True)
    (cut / "state" / "part").write_bytes(b"half a save")
    restored, epoch, history = Checkpointer(tmp_path / "ck").restore_latest(state)
    assert epoch == 1 and history == [{"epoch": 1}]
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["1"]


def test_orbax_failing_mid_write_is_one_line(tmp_path):
    # A file-size limit makes the checkpoint's files fail part-way inside Orbax (past the
    # space check): one line naming the checkpoint and the OS reason, none of Orbax's threads'
    # tracebacks, and the rerun without the limit trains. The limit is below the size of
    # Orbax's _METADATA file (12 KB for this model), written whole: at 60 KB, above it, the
    # arrays' data, which Orbax may write as one file or as several smaller ones, sometimes
    # all fitted, and the save succeeded. The run's own files before the save stay below it.
    # The limit is set by a small Python that then becomes the run (exec), not by a preexec_fn
    # in this process, whose fork with JAX's threads running risks a deadlock.
    limited = (
        "import os, resource, sys; "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, 8_000)); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    rescue = tmp_path / "rescue"  # where the failed checkpoint's state goes (not /tmp)
    rescue.mkdir()
    env = {**os.environ, "AE_JAX_COMPILATION_CACHE": "off", "TMPDIR": str(rescue)}
    run_dir = tmp_path / "run"
    args = (
        sys.executable, "experiments/train.py", f"hydra.run.dir={run_dir}", "trainer.devices=1",
        "trainer.epochs=5", "trainer.figures=false",
    )  # fmt: skip
    proc = subprocess.run(
        (sys.executable, "-c", limited, *args[1:]),
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    assert "Traceback" not in log and "Event loop is closed" not in log, log[-3000:]
    assert f"CheckpointWriteError: cannot write checkpoint {run_dir / 'checkpoints' / '5'} " in log
    assert "(File too large)" in log, log[-2000:]
    assert f"was saved to {rescue}" in log or "could not be saved anywhere" in log, log[-2000:]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"


def test_snapshots_hold_the_state_of_their_own_epoch_and_skip_failed_members():
    # The loop takes a snapshot after each due epoch, before the next epoch donates the state,
    # and hands it over with that epoch's row.
    import jax.numpy as jnp

    from ae_jax.training.loop import Snapshots, Stage, run_stage

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state):
        w = state["w"] + 1.0
        # member 1 diverges in its 4th epoch
        loss = jnp.where((jnp.arange(2) == 1) & (w[:, 0] == 4.0), jnp.nan, 0.0)[:, None]
        return {"w": w}, {"loss": jnp.broadcast_to(loss, (2, 2))}

    seen = []
    snapshots = Snapshots(
        due=lambda epoch: epoch % 3 == 0,
        take=lambda state: state["w"][:, 0] * 10.0,
        use=lambda epoch, arrays, failed: seen.append((epoch, np.asarray(arrays), set(failed))),
    )
    stage = Stage(
        name="",
        epochs=9,
        run_epoch=lambda state, epoch: step(state),
        steps_per_epoch=2,
        batch_size=1,
        progress=False,
        members=2,
    )
    result = run_stage(stage, {"w": jnp.zeros((2, 3))}, snapshots=snapshots)
    assert set(result.failed) == {1}
    assert [(e, a.tolist(), f) for e, a, f in seen] == [
        (3, [30.0, 30.0], set()),
        (6, [60.0, 60.0], {1}),  # the member that diverged is named, for the user to skip
        (9, [90.0, 90.0], {1}),
    ]
