"""Tests of the experiment trackers with the real libraries, reading back what each one wrote:
TensorBoard's own event reader, a W&B offline run's transaction log, MLflow's client on a file
store, the live CSV table; the registry, the Hydra ``logger`` group, errors and ``main=False``."""

import dataclasses
import json
import logging
import math
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from ae_jax.loggers import LoggerError, Loggers, clean_row, flatten_config, open_loggers
from ae_jax.loggers.registry import (
    LOGGERS,
    TensorBoardSettings,
    WandbSettings,
    loggers_settings,
)
from ae_jax.registry import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "model": {"kind": "mlp", "latent_dim": 8, "widths": [64, 32], "sparse_k": None},
    "reg": {},
    "optim": {"name": "adam", "lr": 1e-3},
    "name": "autoencoder",
}
EPOCHS = 5


def _rows() -> list[dict]:
    return [
        {
            "epoch": e,
            "train/loss": 1.0 / e,
            "train/loss/rec": 0.9 / e,
            "time/elapsed": 0.1 * e,
            **({"eval/mse": 1.1 / e} if e % 2 == 0 else {}),
        }
        for e in range(1, EPOCHS + 1)
    ]


FINAL = {"test/mse": 0.0121, "test/pca_mse": 0.0246, "train/loss": 0.2}


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("png") / "reconstructions.png"
    fig = Figure(figsize=(2, 1))
    fig.subplots().imshow(np.random.default_rng(0).random((8, 16)), cmap="gray")
    fig.savefig(path, dpi=50)
    return path


def _log_run(loggers: Loggers, png: Path) -> None:
    for row in _rows():
        loggers.log_metrics(row, step=row["epoch"])
    loggers.log_image("reconstructions", png, step=EPOCHS)
    loggers.log_hparams(CONFIG, FINAL)
    loggers.close()
    loggers.close()  # idempotent


# ------------------------------------------------------------------------------ tensorboard


def test_tensorboard_events_read_back_by_tensorboard(tmp_path, png):
    pytest.importorskip("tensorboardX")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    loggers = open_loggers({"tensorboard": {}}, workdir=tmp_path, run_name="r", config=CONFIG)
    assert loggers.names == ("tensorboard",)
    _log_run(loggers, png)
    acc = ea.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"epoch", "train/loss", "train/loss/rec", "eval/mse", "time/elapsed"} <= set(
        tags["scalars"]
    )
    loss = acc.Scalars("train/loss")
    assert [s.step for s in loss] == list(range(1, EPOCHS + 1))
    np.testing.assert_allclose([s.value for s in loss], [1.0 / e for e in range(1, 6)], rtol=1e-6)
    assert [s.step for s in acc.Scalars("eval/mse")] == [2, 4]
    # Final metrics that were no per-epoch scalar are scalars at the last step (HParams reads them).
    assert [(s.step, round(s.value, 6)) for s in acc.Scalars("test/mse")] == [(EPOCHS, 0.0121)]
    assert len(acc.Scalars("train/loss")) == EPOCHS  # not repeated by the final metrics
    (image,) = acc.Images("reconstructions")
    assert image.step == EPOCHS and image.encoded_image_string == png.read_bytes()
    assert (image.width, image.height) == struct.unpack(">II", png.read_bytes()[16:24])
    content = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["model.latent_dim"].number_value == 8
    assert start.hparams["model.widths"].string_value == "[64, 32]"
    assert start.hparams["optim.name"].string_value == "adam"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    assert {m.name.tag for m in experiment.metric_infos} == set(FINAL)


def test_a_resumed_run_draws_each_epoch_once_in_tensorboard(tmp_path):
    # A session killed after epoch 8 whose last checkpoint was epoch 5: its epochs 6-8 reached
    # the disk, and the resumed session logged them again (TensorBoard drew them twice).
    pytest.importorskip("tensorboardX")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from ae_jax.outputs import epoch_logger

    first = open_loggers({"tensorboard": {}}, workdir=tmp_path, run_name="r")
    on_epoch = epoch_logger(first)
    for epoch in range(1, 9):
        on_epoch({"epoch": epoch, "train/loss": 1.0 / epoch})
    first.flush()  # and then killed: never closed
    again = open_loggers({"tensorboard": {}}, workdir=tmp_path, run_name="r")
    on_epoch = epoch_logger(again)
    on_epoch.resumed(5)  # what the loop calls when it restores checkpoint 5
    for epoch in range(6, 13):
        on_epoch({"epoch": epoch, "train/loss": 2.0 / epoch})
    again.close()
    acc = ea.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [s.step for s in loss] == list(range(1, 13))
    assert loss[4].value == pytest.approx(1 / 5) and loss[5].value == pytest.approx(2 / 6)


def test_a_resumed_stage_draws_each_epoch_once_and_keeps_the_other_stages(tmp_path, png):
    # A layer-wise run killed in its fine-tuning stage after epoch 8, its checkpoint at 5: the
    # resumed stage logged epochs 6-8 again beside the killed session's (a restart mark cannot
    # be used: every stage counts from 1, so it would drop the other stages' events too).
    pytest.importorskip("tensorboardX")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from ae_jax.loggers._tensorboard import stage_tag
    from ae_jax.outputs import epoch_logger

    first = open_loggers({"tensorboard": {}}, workdir=tmp_path, run_name="r")
    layer = epoch_logger(first, "layer0")
    for epoch in range(1, 11):
        layer({"epoch": epoch, "train/loss": 3.0 / epoch})
    baseline = epoch_logger(first, "baseline", nested=("baseline/supervised",))
    for epoch in range(1, 4):
        baseline({"epoch": epoch, "train/loss": 4.0 / epoch})
    finetune = epoch_logger(first, "finetune")
    for epoch in range(1, 9):
        finetune({"epoch": epoch, "train/loss": 1.0 / epoch, "eval/mse": 0.5 / epoch})
    first.log_image("finetune/reconstructions", png, step=7)
    first.flush()  # and then killed: never closed, its last record torn
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    events.write_bytes(events.read_bytes() + b"\x40\x00\x00\x00\x00\x00\x00\x00\x01\x02")
    again = open_loggers({"tensorboard": {}}, workdir=tmp_path, run_name="r")
    finetune = epoch_logger(again, "finetune")
    finetune.resumed(5)  # what the loop calls when it restores the stage's checkpoint 5
    for epoch in range(6, 13):
        finetune({"epoch": epoch, "train/loss": 2.0 / epoch, "eval/mse": 0.25 / epoch})
    again.close()
    acc = ea.EventAccumulator(
        str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "images": 0}
    )
    acc.Reload()
    loss = acc.Scalars("finetune/train/loss")
    assert [s.step for s in loss] == list(range(1, 13))
    assert loss[4].value == pytest.approx(1 / 5) and loss[5].value == pytest.approx(2 / 6)
    assert [s.step for s in acc.Scalars("finetune/eval/mse")] == list(range(1, 13))
    assert acc.Tags()["images"] == []  # epoch 7's image was the killed session's
    # the other stages, whose steps are as high, are as they were
    assert [s.step for s in acc.Scalars("layer0/train/loss")] == list(range(1, 11))
    assert [s.step for s in acc.Scalars("baseline/train/loss")] == [1, 2, 3]
    # a stage nested in another's name is not that stage's
    assert stage_tag("baseline/train/loss", "baseline", ("baseline/supervised",))
    assert not stage_tag("baseline/supervised/train/loss", "baseline", ("baseline/supervised",))
    assert not stage_tag("layer10/train/loss", "layer1")


def test_tensorboard_rows_reach_the_disk_while_the_run_goes_on(tmp_path):
    """Events are written in the caller's thread and flushed: the first row at once, later rows
    every flush_secs or after a row that followed a pause of flush_secs; all of them at close."""
    pytest.importorskip("tensorboardX")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    import time

    def steps() -> list[int]:
        acc = ea.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
        acc.Reload()
        return [s.step for s in acc.Scalars("train/loss")] if acc.Tags()["scalars"] else []

    settings = {"tensorboard": TensorBoardSettings(flush_secs=1, hparams=False)}
    loggers = open_loggers(settings, workdir=tmp_path, run_name="r", config=CONFIG)
    loggers.log_metrics({"train/loss": 1.0}, step=1)
    loggers.log_metrics({"train/loss": 0.5}, step=2)
    assert steps() == [1]  # the second is buffered: within flush_secs of the first flush
    time.sleep(1.1)
    loggers.log_metrics({"train/loss": 0.25}, step=3)  # after a pause: flushed with the rest
    assert steps() == [1, 2, 3]
    loggers.log_metrics({"train/loss": 0.125}, step=4)
    loggers.close()
    assert steps() == [1, 2, 3, 4]


def test_a_resumed_session_logs_the_final_metrics_at_the_runs_last_step(tmp_path):
    # A session that only restored what an earlier one trained (a pipeline killed in its
    # probe) wrote the final metrics at step 0, and every restored stage's last loss, which
    # the earlier session drew per epoch, as a stray point at the last step.
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

    settings = {"tensorboard": TensorBoardSettings(flush_secs=1, hparams=False)}
    first = open_loggers(settings, workdir=tmp_path, run_name="r", config=CONFIG)
    for epoch in (1, 2, 3):
        first.log_metrics({"pretrain/layer_0/train/loss": 1.0 / epoch}, step=epoch)
    for epoch in (1, 2, 3, 4, 5):
        first.log_metrics({"finetune/train/loss": 0.5 / epoch}, step=epoch)
    first.close()  # killed before the end: no final metrics
    again = open_loggers(settings, workdir=tmp_path, run_name="r", config=CONFIG)
    again.log_hparams(CONFIG, {"pretrain/layer_0/train/loss": 1 / 3, "test/mse": 0.25})
    again.close()
    acc = ea.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("test/mse")] == [(5, 0.25)]
    assert [e.step for e in acc.Scalars("pretrain/layer_0/train/loss")] == [1, 2, 3]


def test_an_extended_run_draws_its_new_final_metrics_in_tensorboard(tmp_path):
    # A run extended by more trainer.epochs: the first session's final test/mse counted as one
    # of the run's per-epoch tags, so the second session wrote no final metrics and the
    # HParams tab kept the first session's numbers.
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

    settings = {"tensorboard": TensorBoardSettings(flush_secs=1, hparams=False)}
    first = open_loggers(settings, workdir=tmp_path, run_name="r", config=CONFIG)
    for epoch in (1, 2):
        first.log_metrics({"train/loss": 1.0 / epoch}, step=epoch)
    first.log_hparams(CONFIG, {"train/loss": 0.5, "test/mse": 0.5})
    first.close()
    again = open_loggers(settings, workdir=tmp_path, run_name="r", config=CONFIG)
    for epoch in (3, 4):
        again.log_metrics({"train/loss": 1.0 / epoch}, step=epoch)
    again.log_hparams(CONFIG, {"train/loss": 0.25, "test/mse": 0.125})
    again.close()
    acc = ea.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("test/mse")] == [(2, 0.5), (4, 0.125)]
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]  # no stray final point


# ------------------------------------------------------------------------------------ wandb


def _wandb_records(run_dir: Path, timeout: float = 60.0) -> list:
    """The records of an offline run once W&B's service has written all of them (up to its
    ``exit`` record): the service is a separate process that may still be flushing the file
    when ``finish()`` has returned, on a loaded machine."""
    import time

    deadline = time.time() + timeout
    while True:
        try:
            records = _read_wandb_file(run_dir)
        except Exception:  # a chunk still being written
            if time.time() > deadline:
                raise
            records = []
        kinds = {r.WhichOneof("record_type") for r in records}
        if {"run", "exit"} <= kinds or time.time() > deadline:
            return records
        time.sleep(0.2)


def _read_wandb_file(run_dir: Path) -> list:
    """The protobuf records of an offline run's ``run-<id>.wandb`` (LevelDB log format: 7-byte
    file header, 32 KiB blocks, each chunk a CRC, a length, a type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):
            pending = chunk
        elif kind == 3:
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk if kind == 4 else chunk)
            records.append(record)
    return records


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No credentials, W&B's caches and config in tmp_path."""
    pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))


def _closed_server(monkeypatch) -> str:
    """``http://127.0.0.1:<port>`` where nothing listens, with no proxy in the way."""
    import socket

    from ae_jax.network import PROXY_VARIABLES

    for var in PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_an_online_wandb_run_without_its_server_is_refused_at_once(
    tmp_path, wandb_env, monkeypatch
):
    """Online without a reachable server, W&B retried for 90 s and the run ended in a
    three-line error; now the server is asked first and the line says how to log offline."""
    base = _closed_server(monkeypatch)
    monkeypatch.setenv("WANDB_BASE_URL", base)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    start = time.perf_counter()
    with pytest.raises(LoggerError) as err:
        open_loggers({"wandb": {"mode": "online"}}, workdir=tmp_path, run_name="r")
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert message.startswith(f"logger=wandb: W&B's server {base} is needed for an online run")
    assert "logger.wandb.mode=offline" in message and "\n" not in message
    assert not (tmp_path / "wandb").exists()


def test_a_login_for_the_host_wandb_uses_makes_auto_online(tmp_path, wandb_env, monkeypatch):
    # wandb 0.31's default server is no longer api.wandb.ai: a login for it (what `wandb
    # login` writes) was not seen, and mode auto logged offline.
    from urllib.parse import urlparse

    import wandb

    from ae_jax.loggers._wandb import _base_url, resolve_mode

    host = urlparse(_base_url(wandb)).hostname
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {host}\n  login user\n  password {'0' * 40}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_mode(WandbSettings()) == "online"
    netrc.write_text("machine example.com\n  login user\n  password x\n")
    assert resolve_mode(WandbSettings()) == "offline"


def test_wandb_offline_run_read_back(tmp_path, png, wandb_env, capfd):
    import json

    from ae_jax.loggers._wandb import resolve_mode

    assert resolve_mode(WandbSettings()) == "offline"  # no key, no netrc
    workdir = tmp_path / "run"
    loggers = open_loggers(
        {"wandb": {"project": "ae-jax-test", "tags": ["t1"]}},
        workdir=workdir,
        run_name="run-0",
        config=CONFIG,
        group="sweep-a",
    )
    _log_run(loggers, png)
    (run_dir,) = (workdir / "wandb").glob("offline-run-*")
    records = _wandb_records(run_dir)
    by_kind: dict[str, list] = {}
    for r in records:
        by_kind.setdefault(r.WhichOneof("record_type"), []).append(r)
    (run,) = by_kind["run"]
    assert (run.run.display_name, run.run.run_group, run.run.project) == (
        "run-0",
        "sweep-a",
        "ae-jax-test",
    )
    assert list(run.run.tags) == ["t1"]
    config = {item.key: json.loads(item.value_json) for item in run.run.config.update}
    assert config["model"] == CONFIG["model"]
    history = [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in by_kind["history"]
    ]
    assert [h["_step"] for h in history] == list(range(1, EPOCHS + 1))
    np.testing.assert_allclose([h["train/loss"] for h in history], [1.0 / e for e in range(1, 6)])
    assert [h["_step"] for h in history if "eval/mse" in h] == [2, 4]
    assert history[-1]["reconstructions/_type"] == "image-file"  # the image at the last epoch
    assert list(run_dir.glob("files/media/images/reconstructions_*.png"))
    summary = {}
    for r in by_kind["summary"]:
        summary.update(
            {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update}
        )
    assert summary["test/mse"] == pytest.approx(0.0121)
    assert "exit" in by_kind  # finished cleanly
    out, err = capfd.readouterr()
    assert "wandb" not in (out + err).lower()  # W&B's messages stay in its log files


# ----------------------------------------------------------------------------------- mlflow


def test_mlflow_store_read_back(tmp_path, png, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    long_config = {**CONFIG, "notes": "x" * 7000, "odd key!": 1}
    loggers = open_loggers(
        {"mlflow": {}}, workdir=tmp_path, run_name="run-0", config=long_config, group="sweep-a"
    )
    _log_run(loggers, png)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ae-jax")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run-0" and run.info.status == "FINISHED"
    assert run.data.tags["group"] == "sweep-a"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))  # not repeated at the end
    np.testing.assert_allclose([m.value for m in history], [1.0 / e for e in range(1, 6)])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/mse")] == [2, 4]
    assert len(client.get_metric_history(run.info.run_id, "train/loss/rec")) == EPOCHS
    assert run.data.metrics["test/mse"] == pytest.approx(0.0121)
    params = run.data.params
    assert params["model.latent_dim"] == "8" and params["model.widths"] == "[64, 32]"
    assert params["model.sparse_k"] == "None" and params["reg"] == "{}"
    assert len(params["notes"]) == 6000  # cut to MLflow's limit
    assert params["odd key_"] == "1"  # a character MLflow refuses, replaced
    artifacts = client.list_artifacts(run.info.run_id, f"images/epoch_{EPOCHS}")
    assert [a.path for a in artifacts] == [f"images/epoch_{EPOCHS}/reconstructions.png"]
    assert (tmp_path / "mlartifacts").is_dir()  # beside the database, not in the cwd


def test_a_resumed_run_goes_on_in_its_mlflow_run_and_a_failed_one_says_so(tmp_path, monkeypatch):
    # A run killed after epoch 5 (its checkpoint at 3) and resumed: it used to open a second,
    # unlinked MLflow run, and leave the first RUNNING forever. Now it goes on in the first,
    # without logging epochs 4-5 twice; a run that fails is recorded FAILED, not FINISHED.
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = open_loggers({"mlflow": {}}, workdir=tmp_path, run_name="run", config=CONFIG)
    for epoch in range(1, 6):
        first.log_metrics({"train/loss": 1.0 / epoch}, step=epoch)  # then killed: never closed
    again = open_loggers({"mlflow": {}}, workdir=tmp_path, run_name="run", config=CONFIG)
    for epoch in range(4, 9):
        again.log_metrics({"train/loss": 1.0 / epoch, "eval/mse": 0.1}, step=epoch)
    again.close("failed")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ae-jax").experiment_id])
    assert run.info.status == "FAILED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 9))
    evals = client.get_metric_history(run.info.run_id, "eval/mse")
    assert [m.step for m in evals] == [4, 5, 6, 7, 8]
    assert run.data.params["model.latent_dim"] == "8"


def test_a_resumed_run_goes_on_in_its_wandb_run(tmp_path, wandb_env):
    from ae_jax.loggers._wandb import earlier_run_id

    assert earlier_run_id(tmp_path) is None
    first = open_loggers({"wandb": {"project": "p"}}, workdir=tmp_path, run_name="r")
    first.log_metrics({"train/loss": 1.0}, step=1)
    first.close("preempted")
    (one,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    again = open_loggers({"wandb": {"project": "p"}}, workdir=tmp_path, run_name="r")
    again.close()
    records = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(records) == 2 and {r.name for r in records} == {one.name}  # one id, twice
    assert earlier_run_id(tmp_path) == one.stem.removeprefix("run-")
    # a rerun of another config that reuses part of the run (fresh): a W&B run of its own,
    # which a later resume goes on in
    other = open_loggers({"wandb": {"project": "p"}}, workdir=tmp_path, run_name="r", fresh=True)
    other.close()
    ids = {r.stem for r in (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")}
    assert len(ids) == 2 and earlier_run_id(tmp_path) != one.stem.removeprefix("run-")


def test_wandb_keeps_every_stage_of_a_layerwise_run(tmp_path, wandb_env, png):
    # Every stage counts its epochs from 1, and W&B drops a row logged at a step below one it
    # has seen: it kept layer 0's curve and only the last epoch of every later stage. Each
    # stage now has its own x axis (<stage>/epoch) and W&B numbers the rows.
    from ae_jax.outputs import epoch_logger

    loggers = open_loggers({"wandb": {"project": "p"}}, workdir=tmp_path, run_name="r")
    for stage, epochs in (("pretrain/layer_0", 3), ("pretrain/layer_1", 2), ("finetune", 3)):
        on_epoch = epoch_logger(loggers, stage)
        for epoch in range(1, epochs + 1):
            on_epoch({"epoch": epoch, "train/loss": float(epoch)})
    # a stage's image at its own epoch, whatever the stage logged since
    loggers.log_image("finetune/reconstructions", png, step=2)
    loggers.log_image("reconstructions", png, step=3)
    loggers.close()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    rows = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in _wandb_records(run)
        if r.WhichOneof("record_type") == "history"
    ]
    for stage, epochs in (("pretrain/layer_0", 3), ("pretrain/layer_1", 2), ("finetune", 3)):
        logged = [
            (r[f"{stage}/epoch"], r[f"{stage}/train/loss"])
            for r in rows
            if f"{stage}/train/loss" in r
        ]
        assert logged == [(e, float(e)) for e in range(1, epochs + 1)], stage
    assert any("reconstructions" in "".join(r) for r in rows)  # the image after the stages
    # the stage's image on the stage's x axis, at its epoch
    (image,) = [r for r in rows if any(k.startswith("finetune/reconstructions") for k in r)]
    assert image["finetune/epoch"] == 2
    defined = {
        m.glob_name or m.name: m.step_metric
        for r in _wandb_records(run)
        if r.WhichOneof("record_type") == "metric"
        for m in [r.metric]
    }
    assert defined.get("finetune/*") == "finetune/epoch", defined


def test_a_new_run_in_a_reused_directory_path_is_a_new_run_of_a_shared_mlflow_store(
    tmp_path, monkeypatch
):
    # Matched by its directory's path alone, a run made where a deleted one had been went on
    # in the deleted run's MLflow run: its params were the old ones, its epochs skipped as
    # logged already. A resumed session still goes on in its own.
    pytest.importorskip("mlflow")
    import shutil

    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    (tmp_path / "shared").mkdir()
    run_dir = tmp_path / "run"

    def session(lr, epochs):
        config = {**CONFIG, "optim": {"lr": lr}}
        loggers = open_loggers(
            {"mlflow": {"tracking_uri": uri}}, workdir=run_dir, run_name="r", config=config
        )
        for epoch in epochs:
            loggers.log_metrics({"train/loss": lr * epoch}, step=epoch)
        return loggers

    session(1.0, range(1, 4)).close()
    shutil.rmtree(run_dir)  # the run deleted; its MLflow run stays in the shared store
    session(2.0, range(1, 3)).close("preempted")
    session(2.0, range(3, 5)).close()  # resumed: the same MLflow run goes on
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("ae-jax").experiment_id])
    by_lr = {r.data.params["optim.lr"]: r for r in runs}
    assert sorted(by_lr) == ["1.0", "2.0"], [r.data.params.get("optim.lr") for r in runs]
    history = client.get_metric_history(by_lr["2.0"].info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(e, 2.0 * e) for e in range(1, 5)]
    assert by_lr["2.0"].info.status == "FINISHED"


def test_a_shared_mlflow_database_keeps_its_artifacts_beside_it_and_must_be_writable(
    tmp_path, png, monkeypatch
):
    # The documented way to share a store: its images went to ./mlruns in the current
    # directory (into the repository when run from there), and a store that could not be
    # written held the run for ~2 minutes of MLflow's retries before one line.
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    loggers = open_loggers(
        {"mlflow": {"tracking_uri": uri}}, workdir=tmp_path / "run", run_name="r"
    )
    _log_run(loggers, png)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ae-jax").experiment_id])
    assert client.list_artifacts(run.info.run_id, f"images/epoch_{EPOCHS}")
    assert (tmp_path / "shared" / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()
    (tmp_path / "a-file").write_text("")
    start = time.perf_counter()
    with pytest.raises(LoggerError, match=r"the store sqlite:///.*a-file/mlflow.db cannot be wr"):
        bad = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
        open_loggers({"mlflow": {"tracking_uri": bad}}, workdir=tmp_path / "run2", run_name="r")
    assert time.perf_counter() - start < 10


def test_an_unreachable_mlflow_server_is_refused_at_once(tmp_path, monkeypatch):
    """MLflow retried a tracking server that refused connections for 4 minutes before the run
    ended with its error; now it is asked once, before training, and the line names it."""
    pytest.importorskip("mlflow")
    uri = _closed_server(monkeypatch)
    port = uri.rsplit(":", 1)[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.perf_counter()
    with pytest.raises(LoggerError) as err:
        open_loggers({"mlflow": {}}, workdir=tmp_path, run_name="r", config=CONFIG)
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert message.startswith(f"logger=mlflow: the tracking server {uri} ($MLFLOW_TRACKING_URI)")
    assert f"127.0.0.1:{port} cannot be reached" in message and "mlflow.db" in message
    with pytest.raises(LoggerError, match=r"\(logger.mlflow.tracking_uri\)"):
        open_loggers({"mlflow": {"tracking_uri": uri}}, workdir=tmp_path, run_name="r")


def test_a_failing_mlflow_server_holds_the_run_for_seconds_not_minutes(tmp_path, monkeypatch):
    """A server that answers every request with 503: MLflow's own retry policy (7 retries,
    doubling waits) held the run about 4 minutes before its error; ours gives up in seconds."""
    pytest.importorskip("mlflow")
    import http.server
    import threading

    from ae_jax.loggers._mlflow import HTTP_DEFAULTS

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def _refuse(self):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _refuse

        def log_message(self, *args):
            pass

    _closed_server(monkeypatch)  # no proxy in the way
    for var in HTTP_DEFAULTS:
        monkeypatch.delenv(var, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        start = time.perf_counter()
        with pytest.raises(LoggerError) as err:
            open_loggers({"mlflow": {"tracking_uri": uri}}, workdir=tmp_path, run_name="r")
        assert time.perf_counter() - start < 30
    finally:
        server.shutdown()
    message = str(err.value)
    assert message.startswith(f"logger=mlflow could not be opened in {tmp_path}")
    assert "503" in message and "\n" not in message


def test_a_tracker_that_fails_mid_run_is_dropped_without_asking_its_store_again(
    tmp_path, monkeypatch, caplog
):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    loggers = open_loggers({"mlflow": {}}, workdir=tmp_path, run_name="r", config=CONFIG)
    mlflow_logger = loggers._loggers["mlflow"]
    asked = []

    def lost(*args, **kwargs):
        asked.append("log_batch")
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(mlflow_logger.client, "log_batch", lost)
    monkeypatch.setattr(
        mlflow_logger.client, "set_terminated", lambda *a, **k: asked.append("set_terminated")
    )
    with caplog.at_level(logging.WARNING):
        loggers.log_metrics({"train/loss": 0.5}, step=1)  # must not raise into the training loop
        loggers.log_metrics({"train/loss": 0.4}, step=2)
        loggers.close()
    assert asked == ["log_batch"]  # dropped after one failure; not asked again to close
    assert not loggers and "logger mlflow failed in log_metrics and is dropped" in caplog.text


def test_mlflow_explicit_file_store_renames_nested_metrics(tmp_path, png, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # restored after the test
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    loggers = open_loggers({"mlflow": {}}, workdir=tmp_path, run_name="r", config=CONFIG)
    _log_run(loggers, png)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ae-jax").experiment_id])
    # train/loss (a file) and train/loss/rec (a file under train/loss/) cannot both exist there.
    assert {"train.loss", "train.loss.rec", "eval.mse", "test.mse"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "train.loss")) == EPOCHS


# -------------------------------------------------------------------------------------- csv


def test_csv_table_is_live_widens_and_resumes(tmp_path):
    import csv

    loggers = open_loggers({"csv": {}}, workdir=tmp_path, run_name="r", config=CONFIG)
    for row in _rows()[:3]:
        loggers.log_metrics(row, step=row["epoch"])
        with (tmp_path / "metrics.csv").open() as f:
            assert len(list(csv.DictReader(f))) == row["epoch"]  # written after every epoch
    loggers.close()
    # A resumed run logs epoch 3 again (its checkpoint was epoch 2): 3 is replaced, not repeated.
    loggers = open_loggers({"csv": {}}, workdir=tmp_path, run_name="r", config=CONFIG)
    for row in _rows()[2:]:
        loggers.log_metrics({**row, "train/loss": 7.0}, step=row["epoch"])
    loggers.close()
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [float(r["train/loss"]) for r in rows] == [1.0, 0.5, 7.0, 7.0, 7.0]
    assert [r["eval/mse"] for r in rows][:2] == ["", str(1.1 / 2)]  # a column that came later


def test_csv_table_keeps_every_stage_of_a_layerwise_run(tmp_path):
    # The stages of a layer-wise run count their epochs from 1 under their own columns; each
    # stage used to wipe the rows of those before it (a resumed run's rule), leaving the last.
    import csv

    from ae_jax.outputs import epoch_logger

    loggers = open_loggers({"csv": {}}, workdir=tmp_path, run_name="r", config=CONFIG)
    for stage, epochs in (("pretrain/layer_0", 3), ("pretrain/layer_1", 2), ("finetune", 3)):
        on_epoch = epoch_logger(loggers, stage)
        for epoch in range(1, epochs + 1):
            on_epoch({"epoch": epoch, "train/loss": float(epoch)})
    loggers.close()
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert "epoch" not in rows[0]  # the step is each stage's epoch
    assert [r["pretrain/layer_0/train/loss"] for r in rows] == ["1.0", "2.0", "3.0"]
    assert [r["pretrain/layer_1/train/loss"] for r in rows] == ["1.0", "2.0", ""]
    assert [r["finetune/train/loss"] for r in rows] == ["1.0", "2.0", "3.0"]


# ------------------------------------------------------------------------- the fan-out itself


def test_several_loggers_at_once_and_main_false_writes_nothing(tmp_path, png, monkeypatch):
    pytest.importorskip("tensorboardX")
    settings = {"tensorboard": TensorBoardSettings(flush_secs=1), "csv": None}
    idle = open_loggers(settings, workdir=tmp_path / "p1", run_name="r", config=CONFIG, main=False)
    assert not idle and idle.names == ()
    _log_run(idle, png)
    assert not (tmp_path / "p1").exists()
    both = open_loggers(settings, workdir=tmp_path / "p0", run_name="r", config=CONFIG)
    assert both.names == ("tensorboard", "csv")
    _log_run(both, png)
    assert list((tmp_path / "p0" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "p0" / "metrics.csv").is_file()


@pytest.mark.parametrize("settings", [None, {}])
def test_no_logger_is_a_falsy_no_op(settings, tmp_path, png):
    loggers = open_loggers(settings, workdir=tmp_path / "run", run_name="r", config=CONFIG)
    assert not loggers
    _log_run(loggers, png)
    Loggers().close()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [
        ("tensorboard", "tensorboardX", "tensorboard"),
        ("wandb", "wandb", "trackers"),
        ("mlflow", "mlflow", "trackers"),
    ],
)
def test_missing_library_names_the_logger_and_the_extra(name, module, extra, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, f"{module}.tracking", None)
    with pytest.raises(LoggerError, match=rf"logger={name} needs {module}.*ae-jax\[{extra}\]"):
        open_loggers({name: {}}, workdir=tmp_path, run_name="r", config=CONFIG)


@dataclasses.dataclass
class _FlakySettings:
    fail_at: int = 2
    image_every: int = 3


class _Flaky:
    def __init__(self, settings, calls):
        self.settings, self.calls = settings, calls

    def log_metrics(self, row, step):
        if step == self.settings.fail_at:
            raise OSError("disk full")
        self.calls.append(step)

    def log_image(self, tag, png_path, step):
        self.calls.append(tag)

    def log_hparams(self, hparams, metrics):
        self.calls.append(("hparams", hparams, metrics))

    def close(self):
        self.calls.append("closed")


@pytest.fixture
def flaky():
    calls: list = []
    LOGGERS.register(
        "flaky",
        lambda s, **kw: _Flaky(s, calls),
        config=_FlakySettings,
        overwrite=True,
    )
    _FlakySettings.check = lambda self, prefix: None
    yield calls
    LOGGERS.unregister("flaky")


def test_a_failing_logger_is_dropped_with_a_warning(flaky, tmp_path, png, caplog):
    loggers = open_loggers({"flaky": {"fail_at": 3}}, workdir=tmp_path, run_name="r")
    loggers.log_hparams({"model": {"latent_dim": 8, "widths": [4]}}, {"x": 1.0, "bad": math.nan})
    with caplog.at_level(logging.WARNING):
        for step in range(1, 5):
            loggers.log_metrics({"train/loss": 1.0 / step}, step=step)
    assert "logger flaky failed in log_metrics and is dropped: OSError: disk full" in caplog.text
    assert flaky == [
        ("hparams", {"model.latent_dim": 8, "model.widths": "[4]"}, {"x": 1.0}),
        1,
        2,
        "closed",
    ]
    assert not loggers
    loggers.close()


def test_clean_row_and_flatten_config():
    row = {
        "epoch": 3,
        "train/loss": np.float32(0.5),
        "eval/mse": np.array(0.25),
        "nan": math.nan,
        "inf": math.inf,
        "name": "x",
        "none": None,
        "vector": np.ones(3),
        "flag": True,
    }
    assert clean_row(row) == {"epoch": 3.0, "train/loss": 0.5, "eval/mse": 0.25, "flag": 1.0}
    flat = flatten_config({"a": {"b": 1, "c": [1, 2], "d": None, "e": {}}, "f": np.int64(2)})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "a.d": "None", "a.e": "{}", "f": 2}


def test_hparams_and_config_may_be_dataclasses_or_omegaconf(flaky, tmp_path):
    from omegaconf import OmegaConf

    @dataclasses.dataclass
    class Inner:
        latent_dim: int = 8

    @dataclasses.dataclass
    class Cfg:
        model: Inner = dataclasses.field(default_factory=Inner)

    loggers = open_loggers(
        OmegaConf.create({"flaky": {"fail_at": 99}}), workdir=tmp_path, run_name="r", config=Cfg()
    )
    loggers.log_hparams(Cfg(), {"test/mse": np.float64(0.5)})
    loggers.log_hparams(OmegaConf.structured(Cfg()), {})
    assert flaky[:2] == [
        ("hparams", {"model.latent_dim": 8}, {"test/mse": 0.5}),
        ("hparams", {"model.latent_dim": 8}, {}),
    ]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["logger.tensorboard.flush_sec=5"], "not a setting of logger 'tensorboard'; valid: flush"),
        (["logger=wandb", "logger.wandb.imag_every=2"], "valid: project, entity, mode, tags"),
        (["logger.nope.x=1"], "logger.nope is not a registered logger; registered: tensorboard"),
        (  # Hydra's own hint (+logger.wandb...) would switch W&B on without a word
            ["logger.wandb.image_every=25"],
            "sets logger 'wandb', which this run does not select (logger=tensorboard); select "
            "it with 'logger=[tensorboard,wandb]'",
        ),
        (["logger=none", "logger.csv.filename=m.csv"], "select it with 'logger=[csv]'"),
        (["logger=[csv,wandb]", "logger.wandb.image_every=2", "logger.csv.filename=m.csv"], None),
        (["logger.tensorboard.flush_secs=3"], None),  # the default logger
        (["+experiment=hinton2006_mnist", "logger.wandb.mode=offline"], None),  # may select it
    ],
)
def test_logger_settings_on_the_command_line_are_checked_in_one_line(args, said):
    # A misspelt or unselected logger setting got Hydra's five-line "Could not override ...
    # Key 'flush_sec' is not in struct" and exit status 1.
    from ae_jax.config import check_overrides

    if said is None:
        check_overrides(args)
    else:
        with pytest.raises(ConfigError, match=re.escape(said)):
            check_overrides(args)


def test_registry_settings_and_errors():
    assert set(LOGGERS.names()) >= {"tensorboard", "wandb", "mlflow", "csv"}
    parsed = loggers_settings({"tensorboard": {"flush_secs": 5}, "wandb": None})
    assert parsed["tensorboard"] == TensorBoardSettings(flush_secs=5)
    assert parsed["wandb"] == WandbSettings()
    with pytest.raises(
        ConfigError, match=r"logger.neptune is not a registered logger.*tensorboard"
    ):
        loggers_settings({"neptune": {}})
    with pytest.raises(ConfigError, match=r"logger.wandb.projekt is not a setting.*project"):
        loggers_settings({"wandb": {"projekt": "x"}})
    with pytest.raises(ConfigError, match=r"logger.wandb.mode='cloud'.*offline"):
        loggers_settings({"wandb": {"mode": "cloud"}})
    with pytest.raises(ConfigError, match=r"image_every=-1"):
        loggers_settings({"mlflow": {"image_every": -1}})
    with pytest.raises(ConfigError, match="mapping logger name"):
        loggers_settings(["tensorboard"])
    # accepted before, and then: W&B tags f, o, o; the live CSV replaced by metrics.json at
    # the end or a tracker dropped mid-run; an HParams switch that was neither
    with pytest.raises(ConfigError, match=r"logger.wandb.tags='foo' .*list of names"):
        loggers_settings({"wandb": {"tags": "foo"}})
    for name in ("metrics.json", "config.yaml", "history.csv", "a/b.csv"):
        with pytest.raises(ConfigError, match=r"logger.csv.filename=.*ending in .csv"):
            loggers_settings({"csv": {"filename": name}})
    with pytest.raises(ConfigError, match=r"logger.tensorboard.hparams='maybe' .*true or false"):
        loggers_settings({"tensorboard": {"hparams": "maybe"}})
    with pytest.raises(ConfigError, match=r"flush_secs=True"):
        loggers_settings({"tensorboard": {"flush_secs": True}})


def test_registry_and_interface_import_no_heavy_library():
    code = (
        "import sys, ae_jax.loggers, ae_jax.loggers.registry; "
        "heavy = [m for m in ('jax', 'tensorboardX', 'wandb', 'mlflow', 'tensorboard') "
        "if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------------------- the Hydra group


def _compose(config_dir: Path, overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg.logger, resolve=True)


@pytest.fixture
def mirror_config(tmp_path) -> Path:
    """A config dir with conf/logger/ as it is and a primary config that mirrors conf/config.yaml:
    a structured schema with ``logger: dict[str, Any]`` and ``- logger: tensorboard``."""
    import shutil
    from typing import Any

    from hydra.core.config_store import ConfigStore

    @dataclasses.dataclass
    class Schema:
        logger: dict[str, Any] = dataclasses.field(default_factory=dict)
        name: str = "autoencoder"

    ConfigStore.instance().store(name="logger_test_schema", node=Schema)
    shutil.copytree(REPO / "conf" / "logger", tmp_path / "logger")
    (tmp_path / "config.yaml").write_text(
        "defaults:\n  - logger_test_schema\n  - logger: tensorboard\n  - _self_\n"
    )
    return tmp_path


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], ["tensorboard"]),
        (["logger=none"], []),
        (["logger=wandb"], ["wandb"]),
        (["logger=[tensorboard,wandb]"], ["tensorboard", "wandb"]),
        (["logger=[tensorboard,wandb,mlflow,csv]"], ["tensorboard", "wandb", "mlflow", "csv"]),
        (["logger=[wandb,mlflow]", "logger.wandb.project=p"], ["wandb", "mlflow"]),
    ],
)
def test_logger_group_composes_to_a_mapping(mirror_config, overrides, expected):
    logger = _compose(mirror_config, overrides)
    assert list(logger) == expected
    parsed = loggers_settings(logger)  # every option file holds valid settings
    if "logger.wandb.project=p" in overrides:
        assert parsed["wandb"].project == "p"


def test_real_config_selects_tensorboard_by_default():
    from ae_jax.config import register_configs

    register_configs()
    assert list(_compose(REPO / "conf", [])) == ["tensorboard"]
    assert list(_compose(REPO / "conf", ["logger=[tensorboard,mlflow]"])) == [
        "tensorboard",
        "mlflow",
    ]


# ---------------------------------------------------------------------------- end to end
def _train(tmp_path, *overrides, env=None):
    import os

    cmd = [
        sys.executable,
        "experiments/train.py",
        f"hydra.run.dir={tmp_path}",
        "trainer.devices=1",
        "trainer.epochs=6",
        "trainer.eval_every=2",
        *overrides,
    ]
    merged = {**os.environ, **(env or {})}  # None: unset
    merged = {k: v for k, v in merged.items() if v is not None}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=merged)


def test_default_run_writes_tensorboard_events_and_a_profile(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    proc = _train(tmp_path, "trainer.profile=true")
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    assert "libtpu" not in console and "Unable to initialize backend" not in console
    acc = ea.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    loss = acc.Scalars("train/loss")
    history = [json.loads(r) for r in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [e.step for e in loss] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in loss] == pytest.approx([r["train/loss"] for r in history], rel=1e-6)
    assert [e.step for e in acc.Scalars("eval/mse")] == [2, 4, 6]
    assert {"reconstructions", "training_curves", "filters"} <= set(acc.Tags()["images"])
    traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0


def test_wandb_and_mlflow_runs_read_back_by_their_apis(tmp_path):
    pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient

    env = {
        "WANDB_API_KEY": None,
        "WANDB_MODE": None,
        "NETRC": str(tmp_path / "no-netrc"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-home"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-home"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-home"),
        "MLFLOW_TRACKING_URI": None,
    }
    run = tmp_path / "run"
    proc = _train(run, "logger=[wandb,mlflow]", "trainer.figures=false", env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert not (run / "tensorboard").exists()  # only what was selected
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert offline, "no offline W&B run"
    records = _wandb_records(offline[0].parent)
    steps = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [h["_step"] for h in steps if "train/loss" in h] == [1, 2, 3, 4, 5, 6]
    assert "wandb:" not in (proc.stdout + proc.stderr)  # W&B stays in its own logs
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
    assert runs[0].data.params["model.latent_dim"] == "8"
    assert "test/mse" in runs[0].data.metrics


def test_a_finished_layerwise_run_rerun_leaves_its_trackers_alone(tmp_path):
    # The rerun of a finished pipeline evaluates its stages again without training; it used to
    # open its trackers again: a second TensorBoard event file with the final metrics again.
    args = ("+pretrain=layerwise", "pretrain.layer_epochs=2", "logger=[csv,tensorboard]")
    first = _train(tmp_path, *args, "trainer.figures=false")
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    events = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    table = (tmp_path / "metrics.csv").read_bytes()
    again = _train(tmp_path, *args, "trainer.figures=false")
    log = again.stdout + again.stderr
    assert again.returncode == 0 and "stage complete" in log, log[-3000:]
    assert sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*")) == events
    assert (tmp_path / "metrics.csv").read_bytes() == table


def test_the_next_session_of_a_killed_changed_pipeline_rerun_is_tracked(tmp_path):
    # A rerun that retrains the supervised stage (pretrain.supervised_lr changed), killed in
    # that stage, leaves the new config.yaml, status running and the earlier config's
    # metrics.json. Its next session took the metrics.json for a finished run: it trained
    # the stage and logged none of it to any tracker.
    import yaml

    args = ("+pretrain=layerwise", "pretrain.layer_epochs=2", "pretrain.supervised=true")
    args += ("pretrain.supervised_epochs=4", "pretrain.baseline=false", "pretrain.probe=false")
    args += ("logger=csv", "trainer.figures=false", "trainer.epochs=2")
    first = _train(tmp_path, *args)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    # the killed session's files, as it left them: its config, its status, the old results
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config["pretrain"]["supervised_lr"] = 3e-3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "status.json").write_text(json.dumps({"status": "running"}))
    stage = tmp_path / "supervised" / "checkpoints"
    stage.rename(stage.with_name("checkpoints-before-20261207-150000"))
    again = _train(tmp_path, *args, "pretrain.supervised_lr=3e-3")
    log = again.stdout + again.stderr
    assert again.returncode == 0 and "[supervised] epoch 4/4" in log, log[-3000:]
    now = (tmp_path / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("supervised/train/loss")
    losses = [[r.split(",")[column] for r in table[1:]] for table in (rows, now)]
    assert losses[0] != losses[1] and "" not in losses[1], losses  # this session's epochs
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "completed"


# ------------------------------------------------------- reconstructions every N epochs
def _images(directory: Path) -> dict[str, list[tuple[int, bytes]]]:
    """tag -> [(step, PNG bytes)] of a run's TensorBoard events."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(directory / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    return {
        tag: [(e.step, e.encoded_image_string) for e in acc.Images(tag)]
        for tag in acc.Tags()["images"]
    }


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR: width, height


def test_image_every_logs_reconstructions_as_the_run_trains(tmp_path):
    # logger.<name>.image_every was accepted and did nothing: the trackers got the figures at
    # the end only. Now the reconstructions come every N epochs; the last is the final figure.
    # Each tracker at its own period: TensorBoard every 2 epochs, MLflow every 3.
    proc = _train(
        tmp_path,
        "logger=[tensorboard,mlflow]",
        "logger.tensorboard.image_every=2",
        "logger.mlflow.image_every=3",
        "data.validation=100",
        env={"MLFLOW_TRACKING_URI": None},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    logged = sorted(p.parent.name for p in tmp_path.glob("mlartifacts/**/reconstructions.png"))
    assert logged == ["epoch_3", "epoch_6"]
    images = _images(tmp_path)
    steps = [step for step, _ in images["reconstructions"]]
    assert steps == [2, 4, 6]
    pngs = [png for _, png in images["reconstructions"]]
    assert _png_size(pngs[0]) == _png_size(pngs[1])  # the same layout: input, autoencoder
    assert pngs[0] != pngs[1]  # of the parameters of their own epoch
    assert [step for step, _ in images["training_curves"]] == [6]  # the rest at the end only


def test_image_every_in_a_layerwise_run_shows_the_first_layer_and_the_fine_tuning(tmp_path):
    proc = _train(
        tmp_path,
        "+pretrain=layerwise",
        "pretrain.layer_epochs=3",
        "logger.tensorboard.image_every=2",
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    images = _images(tmp_path)
    # the first layer reconstructs the images; the others reconstruct codes: no images. Each
    # stage's series ends with its last epoch (no final figure shows a stage's own end).
    assert [s for s, _ in images["pretrain/layer_0/reconstructions"]] == [2, 3]
    assert [s for s, _ in images["finetune/reconstructions"]] == [2, 4, 6]
    assert not any(tag.startswith("pretrain/layer_1") for tag in images)


def test_image_every_in_a_vmap_sweep_gives_each_member_its_own(tmp_path):
    cmd = [
        sys.executable,
        "experiments/train.py",
        "--multirun",
        "hydra/launcher=vmap",
        f"hydra.sweep.dir={tmp_path}",
        "trainer.devices=1",
        "trainer.epochs=5",
        "trainer.figures=false",
        "noise=gaussian",
        "noise.level=0,0.3",  # member 1 shows its corrupted inputs too
        "logger.tensorboard.image_every=2",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "vectorised sweep: 2 members" in proc.stdout + proc.stderr
    clean, noisy = (_images(tmp_path / str(i))["reconstructions"] for i in (0, 1))
    # with trainer.figures=false no final figure ends the series: the last epoch's is taken
    assert [s for s, _ in clean] == [2, 4, 5] and [s for s, _ in noisy] == [2, 4, 5]
    # three rows (input, gaussian 0.3, autoencoder) against two
    assert _png_size(noisy[0][1])[1] > _png_size(clean[0][1])[1]


def test_an_image_that_cannot_be_drawn_stops_the_images_not_the_run(tmp_path, monkeypatch, caplog):
    from conftest import train

    import ae_jax.evaluation.figures as figures

    def broken(*args, **kwargs):
        raise ValueError("no room on the canvas")

    monkeypatch.setattr(figures, "plot_reconstructions", broken)
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        metrics = train(
            tmp_path, "trainer.epochs=6", "logger=tensorboard", "logger.tensorboard.image_every=2"
        )
    assert math.isfinite(metrics["test/mse"])
    said = [r.getMessage() for r in caplog.records if "reconstructions stop" in r.getMessage()]
    assert said == [
        "the trackers' reconstructions stop at epoch 2 (ValueError: no room on the canvas); "
        "training goes on"
    ]
    assert "reconstructions" not in _images(tmp_path / "run")


def test_a_vmap_member_stopped_early_ends_its_trackers_where_its_own_run_ends(tmp_path):
    # The group trains on until its last member runs out of patience; a member that stopped
    # earlier kept sending rows and images of epochs its own run never trained.
    cmd = [
        sys.executable,
        "experiments/train.py",
        "--multirun",
        "hydra/launcher=vmap",
        f"hydra.sweep.dir={tmp_path}",
        "trainer.devices=1",
        "optim.lr=0.03,0.001",  # the first overfits the small split soon
        "data.validation=0.2",
        "trainer.early_stopping=true",
        "trainer.patience=2",
        "trainer.eval_every=1",
        "trainer.epochs=60",
        "trainer.figures=false",
        "logger.tensorboard.image_every=5",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    from tensorboard.backend.event_processing import event_accumulator as ea

    trained = []
    for job in ("0", "1"):
        epochs = json.loads((tmp_path / job / "metrics.json").read_text())["train/epochs_trained"]
        trained.append(epochs)
        acc = ea.EventAccumulator(str(tmp_path / job / "tensorboard"), size_guidance={"images": 0})
        acc.Reload()
        assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, epochs + 1)), job
        assert max(e.step for e in acc.Images("reconstructions")) <= epochs, job
    assert trained[0] < trained[1]  # the members stopped apart: the case this is about
