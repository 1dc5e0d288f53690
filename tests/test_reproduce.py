"""scripts/reproduce.py as a background job: one instance per reproduction, and stopping it
stops its training command cleanly (checkpointed, resumable), never leaving it running alone.

The reproduction here is a toy one (the default digits run, long enough to be stopped) in a
temporary ``runs/``; the script's own code runs it, through the same ``reproduce()``.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("reproduce", {script!r})
    m = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = m
    spec.loader.exec_module(m)
    m.RUNS, m.RESULTS = Path({runs!r}), Path({results!r})
    m.REPRODUCTIONS = {{
        "toy": m.Reproduction(
            ["trainer.devices=1", "trainer.epochs=100000", "trainer.checkpoint_every=200",
             "trainer.figures=false"],
            {{"": "toy"}},
        )
    }}
    sys.exit(m.main(["toy"]))
    """
)


def _start(tmp_path: Path, session: bool = False) -> subprocess.Popen:
    code = SCRIPT.format(
        script=str(REPO / "scripts" / "reproduce.py"),
        runs=str(tmp_path / "runs"),
        results=str(tmp_path / "results"),
    )
    env = {**os.environ, "AE_JAX_MNIST_DIR": str(tmp_path)}  # not read by the digits run
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=session,  # its own process group, as a terminal's job is
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_checkpoint(script: subprocess.Popen, run: Path) -> None:
    """Until the toy run has saved a checkpoint (the script still running)."""
    deadline = time.time() + 300
    while not list(run.glob("checkpoints/*/_CHECKPOINT_METADATA")):
        assert script.poll() is None, script.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def test_one_reproduction_at_a_time_and_stopping_it_stops_its_run(tmp_path):
    run = tmp_path / "runs" / "toy"
    first = _start(tmp_path)
    _wait_for_checkpoint(first, run)
    trainer_pid = int((run / ".lock").read_text().split()[1])  # "pid N on host"
    assert trainer_pid != first.pid and _alive(trainer_pid)

    # a second instance of the same reproduction: refused in one line, the first untouched
    second = _start(tmp_path)
    out = second.communicate(timeout=120)[0]
    assert second.returncode == 2, out[-3000:]
    assert f"reproduction 'toy' is in use by pid {first.pid}" in out, out[-3000:]
    assert "Traceback" not in out
    assert first.poll() is None and _alive(trainer_pid)

    # SIGTERM to the script reaches its training command, which checkpoints and stops
    first.send_signal(signal.SIGTERM)
    out = first.communicate(timeout=300)[0]
    assert first.returncode == 143, out[-3000:]
    assert "SIGTERM: stopped" in out and "run the same command again to resume" in out
    assert not _alive(trainer_pid)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "preempted" and "SIGTERM: saved epoch" in status["message"]
    assert not (tmp_path / "results" / "toy").exists()  # an unfinished run is not published


def test_a_reproduction_killed_with_sigkill_stops_its_run_too(tmp_path):
    # kill -9 of the script left its training command running alone: it held the run
    # directory, and the rerun was refused naming its pid. Now the command gets SIGTERM from
    # the kernel when the script dies, saves its checkpoint and stops; the rerun resumes it.
    run = tmp_path / "runs" / "toy"
    script = _start(tmp_path)
    _wait_for_checkpoint(script, run)
    trainer_pid = int((run / ".lock").read_text().split()[1])
    script.send_signal(signal.SIGKILL)
    script.communicate(timeout=60)
    deadline = time.time() + 120
    while _alive(trainer_pid):
        assert time.time() < deadline, "the training command outlived its script"
        time.sleep(0.1)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "preempted" and "SIGTERM: saved epoch" in status["message"]


def test_ctrl_c_stops_the_reproduction_once_its_run_has_saved(tmp_path):
    # Ctrl-C reaches the script and its training command (one process group): the script
    # ended in a KeyboardInterrupt traceback without waiting for the command to save.
    run = tmp_path / "runs" / "toy"
    script = _start(tmp_path, session=True)
    _wait_for_checkpoint(script, run)
    trainer_pid = int((run / ".lock").read_text().split()[1])
    os.killpg(script.pid, signal.SIGINT)
    out = script.communicate(timeout=300)[0]
    assert script.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert "Ctrl-C: stopped" in out and "run the same command again to resume" in out
    assert not _alive(trainer_pid)  # waited for: no training process left behind
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and "Ctrl-C: saved epoch" in status["message"]


def _load_script(tmp_path: Path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    m = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reproduce", m)  # its dataclasses look themselves up there
    spec.loader.exec_module(m)
    m.RUNS, m.RESULTS = tmp_path / "runs", tmp_path / "results"
    return m


def test_publishing_replaces_an_experiment_whole_or_leaves_it_as_it_was(tmp_path, monkeypatch):
    import errno
    import shutil

    m = _load_script(tmp_path, monkeypatch)
    run = tmp_path / "runs" / "toy"
    (run / "sub").mkdir(parents=True)
    (run / "metrics.json").write_text('{"test/mse": 0.5}')
    (run / "config.yaml").write_text("new: config\n")
    (run / "sub" / "history.csv").write_text("epoch\n1\n")
    (run / "params.msgpack").write_bytes(b"not published")
    published = tmp_path / "results" / "toy"
    published.mkdir(parents=True)
    (published / "metrics.json").write_text('{"test/mse": 0.9}')
    (published / "old.png").write_bytes(b"png")
    before = {p.name: p.read_bytes() for p in published.iterdir()}

    # a full disk part-way through the copy: the published files stay, nothing is left over
    copy = shutil.copy2
    copied = []

    def fails_second(src, dst):
        if copied:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        copied.append(src)
        return copy(src, dst)

    monkeypatch.setattr(m.shutil, "copy2", fails_second)
    with pytest.raises(m.PublishError) as err:
        m.publish_one(run, "toy", extra={"selection.json": "{}"})
    assert f"cannot publish toy to {tmp_path / 'results'} (" in str(err.value)
    assert "No space left on device); " in str(err.value)
    assert str(err.value).endswith(f"{published} is as it was")
    assert {p.name: p.read_bytes() for p in published.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["toy"]

    # and with room: the experiment is the run's files, the earlier ones gone
    monkeypatch.setattr(m.shutil, "copy2", copy)
    assert m.publish_one(run, "toy", extra={"selection.json": "{}"}) == ["toy"]
    files = sorted(str(p.relative_to(published)) for p in published.rglob("*") if p.is_file())
    assert files == ["config.yaml", "metrics.json", "selection.json", "sub/history.csv"]
    assert json.loads((published / "metrics.json").read_text()) == {"test/mse": 0.5}
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["toy"]


def test_a_run_of_a_changed_experiment_says_how_to_run_it_anew(tmp_path):
    # The command refused its directory, whose run has another config, with ways out this
    # script cannot take (hydra.run.dir=..., trainer.resume=false); it now says its own.
    def reproduce(*args: str) -> subprocess.CompletedProcess:
        code = SCRIPT.format(
            script=str(REPO / "scripts" / "reproduce.py"),
            runs=str(tmp_path / "runs"),
            results=str(tmp_path / "results"),
        ).replace(
            '"trainer.epochs=100000", "trainer.checkpoint_every=200",', repr(args)[1:-1] + ","
        )
        env = {**os.environ, "AE_JAX_MNIST_DIR": str(tmp_path)}  # not read by the digits run
        cmd = [sys.executable, "-c", code]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    first = reproduce("trainer.epochs=2", "optim.lr=0.001")
    assert first.returncode == 0, first.stdout[-3000:]
    changed = reproduce("trainer.epochs=2", "optim.lr=0.01")
    out = changed.stdout
    assert changed.returncode == 2, out[-3000:]
    run = tmp_path / "runs" / "toy"
    assert "holds a run with another config: optim.lr: 0.001 -> 0.01" in out, out
    assert f"move it aside (mv {run} {run}.old) to run it anew" in out, out


def test_publish_only_says_what_it_published_and_when_nothing(tmp_path, monkeypatch, capsys):
    # with no finished run it printed only "wrote .../summary.json", as if it had published
    m = _load_script(tmp_path, monkeypatch)
    m.REPRODUCTIONS = {"toy": m.Reproduction(["trainer.epochs=2"], {"": "toy"})}
    assert m.main(["--publish-only", "toy"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0] == f"toy: published nothing (no finished run of it in {tmp_path / 'runs' / 'toy'})"
    )
    assert out[-1].startswith("wrote ") and not (tmp_path / "results" / "toy").exists()


@pytest.mark.parametrize("fault", ["a file", "an unwritable log"])
def test_an_unusable_runs_directory_is_one_line_before_anything_runs(
    tmp_path, monkeypatch, capsys, fault
):
    # a traceback before (FileExistsError from runs/'s mkdir, PermissionError from its log)
    m = _load_script(tmp_path, monkeypatch)
    m.REPRODUCTIONS = {"toy": m.Reproduction(["trainer.epochs=2"], {"": "toy"})}
    monkeypatch.setattr(m, "run_command", lambda *a: pytest.fail("a command ran"))
    runs = tmp_path / "runs"
    if fault == "a file":
        runs.write_text("not a directory\n")
    else:
        (runs / "toy.log").mkdir(parents=True)  # opening it to append fails, as unwritable
    monkeypatch.setenv("AE_JAX_MNIST_DIR", str(tmp_path))
    assert m.main(["toy"]) == 2
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and out.startswith("error: "), out
    named = runs if fault == "a file" else runs / "toy.log"
    assert f"{named}: " in out and f"in {runs}, which must be a writable directory" in out
