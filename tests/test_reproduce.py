"""scripts/reproduce.py: finished runs are not run again; unfinished ones are."""

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce.py"


def load():
    spec = importlib.util.spec_from_file_location("reproduce_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_finished_run_is_skipped_and_an_unfinished_one_runs(tmp_path, monkeypatch, capsys):
    r = load()
    monkeypatch.setattr(r, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(r, "RESULTS", tmp_path / "results")
    monkeypatch.setitem(
        r.REPRODUCTIONS,
        "toy",
        r.Reproduction(
            ["+experiment=a", "hydra.run.dir={dir}/one"],
            {"one": "toy_one", "two": "toy_two"},
            then=[["+experiment=b", "hydra.run.dir={dir}/two"]],
        ),
    )
    one = tmp_path / "runs" / "toy" / "one"
    one.mkdir(parents=True)
    (one / "status.json").write_text(json.dumps({"status": "completed"}))
    (one / "metrics.json").write_text("{}")
    (tmp_path / "runs" / "toy" / "two").mkdir()
    (tmp_path / "runs" / "toy" / "two" / "status.json").write_text('{"status": "running"}')
    calls = []
    monkeypatch.setattr(r.subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 0)
    assert r.reproduce("toy") == 0
    assert len(calls) == 1 and "+experiment=b" in calls[0]  # only the unfinished run
    out = capsys.readouterr().out
    assert f"{one} has finished; not run again" in out
    assert (tmp_path / "results" / "toy_one" / "metrics.json").exists()  # published all the same
    assert not (tmp_path / "results" / "toy_two").exists()  # unfinished: not published
