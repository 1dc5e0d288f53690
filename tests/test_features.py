"""Feature extraction from trained runs: load, embed (deterministic, = the encoder), reconstruct,
the linear probe against raw pixels and PCA codes, and the embed command."""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest

from ae_jax.config import Config, validate
from ae_jax.data import Dataset, load_dataset
from ae_jax.features import (
    RunError,
    embed,
    embed_dataset,
    load_run,
    probe_report,
    reconstruct,
    write_run_info,
)
from ae_jax.train import train_and_evaluate


def tiny_config(mnist_path) -> Config:
    cfg = Config()
    cfg.data.source, cfg.data.path, cfg.data.name = "idx", str(mnist_path), "mnist"
    cfg.data.max_train, cfg.data.max_test = 1000, 200
    cfg.model.depth, cfg.model.widths, cfg.model.latent_dim = 1, [32], 8
    cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.devices = 3, 50, 1
    cfg.trainer.figures, cfg.trainer.progress = False, False
    return validate(cfg)


@pytest.fixture(scope="module")
def trained_run(mnist_path, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    train_and_evaluate(tiny_config(mnist_path), workdir)
    return workdir


@pytest.fixture(scope="module")
def data(mnist_path) -> Dataset:
    return load_dataset(tiny_config(mnist_path).data)


def test_embed_is_deterministic_and_equals_the_runs_encoder(trained_run, data):
    run = load_run(trained_run)  # no run.json: shapes come from the run's dataset
    saved = np.load(trained_run / "reconstructions.npz")
    codes = embed(run, data.x_test)
    assert codes.shape == (200, 8) and codes.dtype == np.float32
    np.testing.assert_array_equal(codes, embed(run, data.x_test))  # deterministic
    # the codes the training run itself wrote with its encoder
    np.testing.assert_allclose(codes, saved["codes"], rtol=1e-5, atol=1e-6)
    # flat (N, D) rows are accepted and give the same codes
    np.testing.assert_array_equal(embed(run, data.x_test.reshape(200, -1)), codes)
    recon = reconstruct(run, saved["input"])
    assert recon.shape == saved["input"].shape
    np.testing.assert_allclose(recon, saved["reconstruction"], rtol=1e-5, atol=1e-6)
    z_train, y_train, z_test, y_test = embed_dataset(run, data)
    assert z_train.shape == (1000, 8) and y_train.shape == (1000,)
    np.testing.assert_array_equal(z_test, codes)


def test_run_info_gives_the_same_run_without_loading_data(trained_run, data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    write_run_info(copy, data, "sigmoid")
    run = load_run(copy)
    assert run.example_shape == (28, 28, 1)
    np.testing.assert_array_equal(
        embed(run, data.x_test[:5]), embed(load_run(trained_run), data.x_test[:5])
    )


def test_bad_runs_and_inputs_are_refused(trained_run, tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    no_params = tmp_path / "no_params"
    no_params.mkdir()
    shutil.copy(trained_run / "config.yaml", no_params / "config.yaml")
    with pytest.raises(RunError, match="has no params.msgpack; give the directory of a fin"):
        load_run(no_params)
    # a run that has not finished says how it stands, from its status.json
    stopped = "SIGTERM: saved epoch 5/9 to x/checkpoints/5; run the same command again to resume"
    (no_params / "status.json").write_text(json.dumps({"status": "preempted", "message": stopped}))
    with pytest.raises(RunError) as err:
        load_run(no_params)
    assert str(err.value) == (
        f"{str(no_params)!r} has no params.msgpack: its run has not finished (preempted: "
        f"{stopped}); give it here once it has finished"
    )
    (no_params / "status.json").write_text(json.dumps({"status": "failed", "error": "E: x"}))
    with pytest.raises(RunError, match=r"its run failed: E: x; train it again \(its command"):
        load_run(no_params)  # it said "give it here once it has finished": it never will
    (no_params / "status.json").write_text(json.dumps({"status": "running"}))
    (no_params / ".lock").write_text(f"pid 999999999 on {socket.gethostname()}\n")
    with pytest.raises(RunError, match=r"has not finished \(stopped without a word \(its proc"):
        load_run(no_params)
    other = tmp_path / "other_model"
    shutil.copytree(trained_run, other)
    text = (other / "config.yaml").read_text().replace("latent_dim: 8", "latent_dim: 9")
    (other / "config.yaml").write_text(text)
    with pytest.raises(RunError, match="does not fit|shape"):
        load_run(other)
    # a damaged config.yaml: tracebacks of yaml and omegaconf before, and an empty one said
    # that params.msgpack did not fit
    damaged = {
        "garbage: [\n": "expected",
        "": "it holds no config",
        "model: {latent_dim: foo}\n": "foo",
    }
    for text, problem in damaged.items():
        (other / "config.yaml").write_text(text)
        with pytest.raises(RunError) as err:
            load_run(other)
        assert str(err.value).startswith(f"{str(other / 'config.yaml')!r} cannot be read (")
        assert problem in str(err.value) and str(err.value).endswith(
            "restore it (Hydra's copy is .hydra/config.yaml)"
        ), err.value
    run = load_run(trained_run)
    with pytest.raises(RunError, match=r"x has shape \(3, 10\)"):
        embed(run, np.zeros((3, 10), np.float32))
    grey = np.full((2, 28, 28), 0.5, np.float32)  # (N, H, W), as training reads grey images
    np.testing.assert_array_equal(embed(run, grey), embed(run, grey[..., None]))
    grey[1, 3, 4] = np.nan  # gave NaN codes without a word
    with pytest.raises(RunError, match=r"x holds 1 NaN/inf values \(the first at index \[1, 3"):
        embed(run, grey)


def test_unscaled_input_is_said(trained_run, data, caplog):
    # 0..255 pixels for a run on [0, 1] gave codes 16x too large, without a word
    import logging

    run = load_run(trained_run)
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        embed(run, data.x_test[:4])
        reconstruct(run, data.x_test[:4] * 1.2)  # a little outside: not said
    assert "far outside" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        embed(run, data.x_test[:4] * 255)
    assert "x spans [0, 255], far outside the [0, 1] that" in caplog.text
    assert "take x after the run's data.scaling=" in caplog.text


def test_probe_codes_vs_raw_pixels_vs_pca(data, trained_run):
    run = load_run(trained_run)
    z_train, _, z_test, _ = embed_dataset(run, data)
    report = probe_report(z_train, z_test, data, steps=100)
    assert set(report) == {
        "probe/error_pct",
        "probe/train_error_pct",
        "probe/raw/error_pct",
        "probe/pca/error_pct",
    }
    # measured (1000 train / 200 test MNIST, a 3-epoch 8-unit AE): raw pixels 10.5%, PCA-8 30%,
    # codes 55%; every probe is well below chance (90%) and the 784 raw pixels beat 8 numbers
    assert report["probe/raw/error_pct"] < 20.0
    assert report["probe/error_pct"] < 75.0 and report["probe/pca/error_pct"] < 50.0
    assert report["probe/raw/error_pct"] < report["probe/pca/error_pct"]
    unlabelled = Dataset(
        "u", data.x_train, None, data.x_test, None, data.example_shape, True, "unit"
    )
    with pytest.raises(RunError, match="no labels"):
        probe_report(z_train, z_test, unlabelled)


def _embed_main():
    """``experiments/embed.py``'s main (the experiments folder is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "embed.py"
    spec = importlib.util.spec_from_file_location("embed_command", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_embed_command_writes_codes(trained_run, data, tmp_path, capsys):
    main = _embed_main()
    out = tmp_path / "codes.npz"
    report = main([str(trained_run), "--out", str(out), "--reconstructions", "--probe"])
    saved = np.load(out)
    assert report["z_test"] == [200, 8]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"wrote {out}: z_train 1000 x 8, z_test 200 x 8, y_train 1000, " + (
        "y_test 200, x_hat_test 200 x 28 x 28 x 1"
    )
    assert printed[1].startswith("linear probe test error: codes ")
    assert f"PCA-8 {report['probe/pca/error_pct']:.2f}%" in printed[1]
    assert saved["z_train"].shape == (1000, 8) and saved["x_hat_test"].shape == (200, 28, 28, 1)
    run = load_run(trained_run)
    np.testing.assert_array_equal(saved["z_test"], embed(run, data.x_test))
    np.testing.assert_array_equal(saved["y_test"], data.y_test)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_embed_probe_is_the_runs_own_unless_told(trained_run, tmp_path, capsys):
    """--probe fitted l2 1e-4 and 500 steps whatever the run's pretrain.probe_l2 and
    probe_steps said, and did not say which it used."""
    from omegaconf import OmegaConf

    main = _embed_main()
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.pretrain.probe_l2, cfg.pretrain.probe_steps = [10.0], 50
    OmegaConf.save(cfg, run / "config.yaml")
    own = main([str(run), "--out", str(tmp_path / "own.npz"), "--probe"])
    assert capsys.readouterr().out.splitlines()[1].endswith("; l2 10, 50 L-BFGS steps)")
    told = main([str(run), "--out", str(tmp_path / "told.npz"), "--probe", "--probe-l2", "1e-4"])
    assert capsys.readouterr().out.splitlines()[1].endswith("; l2 0.0001, 50 L-BFGS steps)")
    assert told["probe/error_pct"] < own["probe/error_pct"]  # l2 10 all but erases the codes
    with pytest.raises(SystemExit):  # several penalties need a validation split: it has none
        main([str(run), "--probe", "--probe-l2", "1e-4", "1e-2"])
    assert "give one with --probe-l2" in capsys.readouterr().err


def test_embed_on_a_run_that_did_not_complete_says_so(trained_run, tmp_path, capsys):
    # a pipeline whose supervised stage diverged keeps its deep autoencoder's params.msgpack:
    # its codes were written as if the run had completed
    run = tmp_path / "failed"
    shutil.copytree(trained_run, run)
    (run / "embeddings.npz").unlink(missing_ok=True)
    status = {"status": "failed", "error": "TrainingDiverged: [supervised] non-finite loss"}
    (run / "status.json").write_text(json.dumps(status))
    _embed_main()([str(run)])
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        f"note: {run} did not complete (failed: TrainingDiverged: [supervised] non-finite "
        "loss): these are the codes of the parameters it wrote"
    )


def test_embed_command_faults_are_one_line_before_any_compute(trained_run, tmp_path, capsys):
    """A missing data file, an --out that cannot be written, --probe without labels and a bad
    --probe-steps each end in one line (exit 2), and none leaves a file behind."""
    from omegaconf import OmegaConf

    main = _embed_main()

    def refused(args, expected):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and "Traceback" not in "".join(err)
        if not err[0].startswith("usage:"):  # argparse's own errors lead with its usage
            assert len(err) == 1, err
        assert expected in err[-1], err

    def run_on(directory, **data):
        run = tmp_path / directory
        shutil.copytree(trained_run, run)
        cfg = OmegaConf.load(run / "config.yaml")
        cfg.data.update(data)
        OmegaConf.save(cfg, run / "config.yaml")
        (run / "embeddings.npz").unlink(missing_ok=True)
        (run / "run.json").unlink()  # as if trained on that data: no fingerprint to compare
        return run

    gone = run_on("moved", path=str(tmp_path / "no-such-mnist"))
    refused([gone], "no-such-mnist")
    images = tmp_path / "unlabelled.npy"
    np.save(images, np.random.default_rng(0).random((300, 28, 28), dtype=np.float32))
    unlabelled = run_on(
        "unlabelled",
        source="array",
        path=str(images),
        name="unlabelled",
        max_train=None,
        max_test=None,
    )
    refused([unlabelled, "--probe"], "--probe: unlabelled has no labels")
    refused([trained_run, "--out", tmp_path / "no-dir" / "z.npz"], "does not exist")
    refused([trained_run, "--probe", "--probe-steps", "0"], "--probe-steps 0")
    refused([trained_run, "--probe-l2", "1e-3"], "--probe-l2 tunes the linear probe, which ru")
    refused(  # they were ignored without a word
        [trained_run, "--probe-steps", "9", "--probe-l2", "1"], "--probe-steps and --probe-l2 tune"
    )
    # an --out that would replace a file of another kind: the run's parameters, data, ...
    params = (trained_run / "params.msgpack").read_bytes()
    refused([trained_run, "--out", trained_run / "params.msgpack"], "give a path ending in .npz")
    other = tmp_path / "data.npz"
    np.savez(other, x=np.zeros((3, 4)))
    before = other.read_bytes()
    refused([trained_run, "--out", other], f"--out {other} exists and is not an embeddings file")
    assert (trained_run / "params.msgpack").read_bytes() == params and other.read_bytes() == before
    # data that is not what the run trained on (its run.json's fingerprint): codes of other data
    changed = tmp_path / "changed"
    shutil.copytree(trained_run, changed)
    cfg = OmegaConf.load(changed / "config.yaml")
    cfg.data.max_train = 999
    OmegaConf.save(cfg, changed / "config.yaml")
    (changed / "embeddings.npz").unlink(missing_ok=True)
    refused([changed], f"{changed} trained on other data: {cfg.data.path} has changed since")
    for run in (gone, unlabelled, changed):
        assert not (run / "embeddings.npz").exists()
    assert not list(tmp_path.glob("**/.*.tmp"))
    # the unlabelled run's codes are written without --probe
    report = main([str(unlabelled)])
    assert report["z_train"] == [240, 8] and "y_train" not in np.load(unlabelled / "embeddings.npz")


def test_embed_writes_the_validation_codes_and_checks_out_before_computing(
    mnist_path, tmp_path, capsys, monkeypatch
):
    # A run with data.validation: its z_train left the held-out examples out, and the file had
    # no z_val. An --out the directory refused was found after every code was computed.
    cfg = tiny_config(mnist_path)
    cfg.data.validation = 100
    run_dir = tmp_path / "run"
    train_and_evaluate(validate(cfg), run_dir)
    main = _embed_main()
    out = tmp_path / "codes.npz"
    main([str(run_dir), "--out", str(out)])
    saved, data = np.load(out), load_dataset(cfg.data)
    assert saved["z_train"].shape == (1000, 8) and saved["z_val"].shape == (100, 8)
    np.testing.assert_array_equal(saved["z_val"], embed(load_run(run_dir), data.x_val))
    np.testing.assert_array_equal(saved["y_val"], data.y_val)
    assert "z_val 100 x 8" in capsys.readouterr().out

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    def computed(*args, **kwargs):
        raise AssertionError("the codes were computed before --out was checked")

    monkeypatch.setattr(main.__globals__["tempfile"], "NamedTemporaryFile", refuse)
    monkeypatch.setitem(main.__globals__, "embed", computed)
    with pytest.raises(SystemExit) as exit_info:
        main([str(run_dir), "--out", str(tmp_path / "other.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].endswith(f"--out {tmp_path / 'other.npz'} cannot be written: Permission denied")


def test_a_relative_data_path_is_read_from_where_the_run_started(tmp_path, monkeypatch):
    """embed.py in another directory holding a different file of the same relative name read
    that file, and refused the run as trained on other data."""
    import types

    import yaml

    from ae_jax.config import DataConfig
    from ae_jax.features import run_data_config

    started, here = tmp_path / "project", tmp_path / "elsewhere"
    for d in (started, here):
        (d / "data").mkdir(parents=True)
        (d / "data" / "x.csv").write_text("1,2\n3,4\n")
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    record = {"hydra": {"runtime": {"cwd": str(started)}}}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(record))
    fake = types.SimpleNamespace(path=run, cfg=types.SimpleNamespace(data=DataConfig(
        source="array", path="data/x.csv", test_path="data/test.csv")))  # fmt: skip
    monkeypatch.chdir(here)
    data = run_data_config(fake)
    assert data.path == str(started / "data" / "x.csv")  # not ./data/x.csv
    assert data.test_path == str(started / "data" / "test.csv")  # named where it was read
    (started / "data" / "x.csv").unlink()  # the project moved: the file found here instead
    assert run_data_config(fake).path == "data/x.csv"
