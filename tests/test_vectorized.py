"""The vectorised sweep engine gives every member the metrics of its own sequential run."""

import json

import pytest
from conftest import make_config

from ae_jax.config import ConfigError
from ae_jax.sweeps.vectorized import (
    group_by_program,
    grouping_settings,
    shared_draws,
    train_group,
    train_vectorized,
)
from ae_jax.train import train_and_evaluate

MEMBERS = [
    ("noise.level=0.0", "reg.contractive.strength=0.0", "trainer.seed=0"),
    ("noise.level=0.25", "reg.contractive.strength=0.01", "trainer.seed=0"),
    ("noise.level=0.4", "reg.contractive.strength=0.1", "trainer.seed=1"),
    ("noise.level=0.1", "reg.contractive.strength=0.05", "trainer.seed=2", "optim.lr=3e-3"),
]
COMMON = ("trainer.epochs=6", "noise=masking", "reg=contractive", "noise.eval_level=0.25")
COMPARED = (
    "test/mse",
    "test/pca_mse",
    "test/denoise_mse",
    "test/jacobian_fro",
    "test/mean_code_activation",
    "train/loss",
)


def test_members_match_their_sequential_runs(tmp_path):
    configs = [make_config(*COMMON, *m) for m in MEMBERS]
    assert len(group_by_program(configs)) == 1
    vec = train_vectorized(configs, [tmp_path / f"vec{i}" for i in range(len(configs))])
    for i, cfg in enumerate(configs):
        seq = train_and_evaluate(cfg, tmp_path / f"seq{i}")
        for key in COMPARED:
            assert vec[i][key] == pytest.approx(seq[key], rel=2e-4, abs=1e-6), (i, key)
        for name in (
            "metrics.json",
            "history.jsonl",
            "reconstructions.npz",
            "params.msgpack",
            "config.yaml",
        ):
            assert (tmp_path / f"vec{i}" / name).exists()
        status = json.loads((tmp_path / f"vec{i}" / "status.json").read_text())
        assert status["status"] == "completed" and status["members"] == len(configs)


def test_every_member_gets_its_figures_before_it_is_completed(tmp_path, monkeypatch):
    """The members' figures are drawn together, after every member is evaluated (on spare cores
    too: ae_jax.evaluation.figures.draw_many_runs_figures); a member is completed only once its
    own are written, and each gets the four a single run draws."""
    import ae_jax.evaluation.figures as F

    configs = [
        make_config("trainer.epochs=2", "trainer.figures=true", "noise=masking", f"noise.level={v}")
        for v in (0.0, 0.1, 0.2)
    ]
    drawn = []
    draw_many = F.draw_many_runs_figures

    def spy(jobs, workers=None):
        for job in jobs:  # not yet drawn, and its member not yet completed
            assert not (job.workdir / "reconstructions.png").exists()
            status = json.loads((job.workdir / "status.json").read_text())
            assert status["status"] == "running"
        drawn.extend(job.workdir for job in jobs)
        draw_many(jobs, workers=1)

    monkeypatch.setattr(F, "draw_many_runs_figures", spy)
    workdirs = [tmp_path / f"m{i}" for i in range(3)]
    train_vectorized(configs, workdirs)
    assert drawn == workdirs
    for w in workdirs:
        for name in ("reconstructions", "training_curves", "code_activations", "filters"):
            assert (w / f"{name}.png").stat().st_size > 1000, (w, name)
        assert json.loads((w / "status.json").read_text())["status"] == "completed"


def test_members_that_change_the_program_run_as_separate_groups(tmp_path):
    configs = [
        make_config("trainer.epochs=2", f"model.latent_dim={k}", f"trainer.seed={s}")
        for k in (4, 8)
        for s in (0, 1)
    ]
    groups = group_by_program(configs)
    assert sorted(map(sorted, groups)) == [[0, 1], [2, 3]]
    assert grouping_settings(configs) == ["model.latent_dim"]  # not trainer.seed: it is traced
    with pytest.raises(
        ConfigError, match="differ only in .*; these also differ in model.latent_dim"
    ):
        train_group(configs, [tmp_path / str(i) for i in range(4)])
    more = [*configs, make_config("trainer.epochs=3", "loss=bce", "optim.lr=0.1")]
    assert grouping_settings(more) == ["loss.kind", "model.latent_dim", "trainer.epochs"]
    # trackers are each member's own (a sweep over logger.tensorboard.image_every split)
    trackers = [
        make_config("trainer.epochs=2", "logger=tensorboard", f"logger.tensorboard.image_every={n}")
        for n in (0, 2, 5)
    ]
    trackers.append(make_config("trainer.epochs=2", "logger=[csv,wandb]"))
    assert group_by_program(trackers) == [[0, 1, 2, 3]]


def _vmap_multirun(tmp_path, *overrides: str, returncode: int = 0) -> str:
    """``experiments/train.py --multirun hydra/launcher=vmap`` in a subprocess; its output
    (its exit status ``returncode``: 2 when a job failed)."""
    import subprocess
    import sys

    from conftest import REPO

    cmd = [
        sys.executable,
        "experiments/train.py",
        "--multirun",
        "hydra/launcher=vmap",
        f"hydra.sweep.dir={tmp_path}",
        "trainer.figures=false",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == returncode, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_vmap_launcher_runs_a_multirun_as_one_program(tmp_path):
    out = _vmap_multirun(
        tmp_path, "trainer.epochs=2", "noise=masking", "noise.level=0,0.25", "trainer.seed=0,1"
    )
    assert "vectorised sweep: 4 members in one program" in out
    assert "vectorised groups" not in out  # one group: nothing to explain
    # every job line in the launcher's own format (a job's logging once left "#1".."#3" in
    # the previous job's format, and in that job's train.log)
    assert all(f"[HYDRA] \t#{job} : trainer.figures" in out for job in range(4)), out[:2000]
    for job in range(4):
        d = tmp_path / str(job)
        assert json.loads((d / "status.json").read_text())["status"] == "completed"
        assert (d / ".hydra" / "overrides.yaml").exists()
        assert "test/mse" in json.loads((d / "metrics.json").read_text())
        assert json.loads((d / "metrics.json").read_text())["compile/epoch_traces"] == 1
        devices = json.loads((d / "run.json").read_text())["devices"]  # where it trained
        assert devices["parallel"] == "vmap" and devices["members"] == 4, devices
        # the job's train.log holds its group's lines, as a sequential job's holds its own,
        # and of the members' own lines only its own: one test line, its own results
        log = (d / "train.log").read_text()
        assert "[ae_jax][INFO] - vectorised sweep: 4 members" in log and "epoch 2/2" in log
        assert f"outputs in {d}" in log and " : trainer.figures" not in log
        assert log.count("outputs in ") == 1 and log.count("test: mse=") == 1, log
        mse = json.loads((d / "metrics.json").read_text())["test/mse"]
        assert f"test: mse={mse:.5g}" in log, log


def test_a_finished_vmap_sweep_run_again_leaves_its_trackers_as_they_were(tmp_path):
    # Evaluated again with their trackers open, its members logged their images and final
    # metrics a second time (TensorBoard and MLflow twice at the last step, W&B a second
    # session); a finished single run opens none.
    args = ("trainer.epochs=2", "optim.lr=1e-3,2e-3")

    def trackers():
        return {
            str(p.relative_to(tmp_path)): p.stat().st_size
            for p in tmp_path.glob("*/tensorboard/**/*")
            if p.is_file()
        }

    _vmap_multirun(tmp_path, *args)
    first = trackers()
    assert len(first) >= 2, first
    again = _vmap_multirun(tmp_path, *args)
    assert "vectorised sweep: 2 members" in again  # evaluated again, as documented
    assert trackers() == first
    assert all(
        json.loads((tmp_path / j / "status.json").read_text())["status"] == "completed"
        for j in "01"
    )


def test_a_member_whose_tracker_cannot_be_opened_fails_alone_and_the_others_train(tmp_path):
    # Its group failed whole, every member left saying "running", with the error in no
    # train.log, and a report said they had been killed
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "tensorboard").write_text("a file where the events directory goes\n")
    out = _vmap_multirun(tmp_path, "trainer.epochs=2", "optim.lr=1e-3,2e-3,3e-3", returncode=2)
    said = f"LoggerError: logger=tensorboard could not be opened in {tmp_path / '1'}"
    assert f"job #1: {said}" in out and "the group's 2 other jobs train without it" in out
    assert out.index(said) < out.index("vectorised sweep: 2 members"), out[-3000:]
    assert "Traceback" not in out and out.count("epoch 2/2") == 1
    refused = json.loads((tmp_path / "1" / "status.json").read_text())
    assert refused["status"] == "failed" and said in refused["error"], refused
    assert said in (tmp_path / "1" / "train.log").read_text()
    for job in "02":
        assert json.loads((tmp_path / job / "status.json").read_text())["status"] == "completed"
        assert list((tmp_path / job / "tensorboard").glob("events.out.tfevents.*"))
    assert f"{tmp_path / '1'}: {said}" in out  # the multirun's summary


def test_the_launcher_says_which_settings_split_a_sweep_into_groups(tmp_path):
    out = _vmap_multirun(
        tmp_path, "trainer.epochs=2", "trainer.figures=false", "model.latent_dim=4,8",
        "trainer.seed=0,1",
    )  # fmt: skip
    assert (
        "2 vectorised groups: the jobs differ in model.latent_dim, which the members of one "
        "program share (they may differ in noise.level, noise.eval_level"
    ) in out
    assert out.count("vectorised sweep: 2 members in one program") == 2


def test_a_group_the_data_refuses_fails_before_any_group_trains(tmp_path):
    # kernel 9 is larger than digits' 8x8 images: a check that needs the loaded data, made for
    # every group first (each against its own model, the dataset loaded once between them);
    # the group that can train still does
    out = _vmap_multirun(
        tmp_path, "trainer.epochs=2", "model=conv", "model.kernel_size=3,9", returncode=2
    )
    refusal = "model.kernel_size=9 is larger than this dataset's 8x8 images; valid: 1 to 8"
    assert refusal in out and out.index(refusal) < out.index("vectorised sweep: 1 member"), out
    assert out.count("vectorised sweep: 1 member") == 1 and "epoch 2/2" in out
    good, bad = (json.loads((tmp_path / j / "status.json").read_text()) for j in "01")
    assert good["status"] == "completed" and "test/mse" in json.loads(
        (tmp_path / "0" / "metrics.json").read_text()
    )
    assert bad["status"] == "failed" and refusal in bad["error"]
    assert refusal in (tmp_path / "1" / "train.log").read_text()
    assert refusal not in (tmp_path / "0" / "train.log").read_text()


def test_the_launcher_spreads_a_group_over_the_hosts_cores(tmp_path):
    # Without a device count of the user's (the tests set 8 fake devices: removed here), the
    # launcher gives the group one CPU device per core, at most one per member, before JAX
    # starts: nothing it does first (claiming the jobs' directories) may start JAX's backend.
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "experiments/train.py", "--multirun", "hydra/launcher=vmap"]
    cmd += [f"hydra.sweep.dir={tmp_path}", "trainer.figures=false", "trainer.epochs=2"]
    cmd += ["noise=masking", "noise.level=0,0.25", "trainer.seed=0,1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    if len(os.sched_getaffinity(0)) > 1:  # CI has 2 cores
        assert "4 members over " in out and "on 1 device" not in out, out[-3000:]
    else:
        assert "4 members in one program on 1 device" in out, out[-3000:]


def test_members_stop_early_each_at_their_own_best_epoch(tmp_path, caplog):
    # two learning rates: each member keeps its own best evaluation's parameters, as its
    # sequential run does; the group trains until the last member has run out of patience.
    # The console says when each member stops, by its job (it said nothing while another
    # member trained on, then listed the kept epochs in the devices' order, unnamed: "keeping
    # the parameters of epoch 24/8/4/24/6/6")
    import logging

    early = (
        "data.validation=0.15",
        "trainer.early_stopping=true",
        "trainer.patience=3",
        "trainer.eval_every=5",
    )
    configs = [make_config(*early, f"optim.lr={lr}") for lr in ("3e-3", "1e-2")]
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        vec = train_vectorized(configs, [tmp_path / f"vec{i}" for i in range(2)])
    said = caplog.text
    seqs = [train_and_evaluate(c, tmp_path / f"seq{i}") for i, c in enumerate(configs)]
    first, last = sorted(range(2), key=lambda i: seqs[i]["train/epochs_trained"])
    stop = (  # the member that stops first says so; the last one stops the group
        f"vec{first}: early stopping after epoch {seqs[first]['train/epochs_trained']}: val/mse "
        f"has not improved for 3 evaluations; keeping the parameters of epoch "
        f"{seqs[first]['train/best_epoch']}"
    )
    assert stop in said, said[-3000:]
    group = f"early stopping after epoch {seqs[last]['train/epochs_trained']}: no member's"
    assert group in said, said[-3000:]
    for i, (v, s) in enumerate(zip(vec, seqs)):
        assert v["train/best_epoch"] == s["train/best_epoch"]
        assert v["val/mse"] == pytest.approx(s["val/mse"], rel=2e-4)
        assert v["test/mse"] == pytest.approx(s["test/mse"], rel=2e-4)
        # each member records its own run's length (it used to record the group's), and its
        # history ends there, as its sequential run's does
        assert v["train/epochs_trained"] == s["train/epochs_trained"] < 300
        rows = [
            (tmp_path / f"{kind}{i}" / "history.jsonl").read_text().splitlines()
            for kind in ("vec", "seq")
        ]
        assert len(rows[0]) == len(rows[1]) == s["train/epochs_trained"]
    assert len({v["train/best_epoch"] for v in vec}) == 2  # each its own
    assert len({v["train/epochs_trained"] for v in vec}) == 2
    kept = ", ".join(f"vec{i} {v['train/best_epoch']}" for i, v in enumerate(vec))
    assert f"keeping each member's best epoch: {kept}" in said


def test_vmap_launcher_trains_a_layerwise_pipeline_on_its_own(tmp_path):
    # a pipeline is several programs in sequence: the launcher runs each such job the normal
    # way (every stage, its own files) instead of training it as a plain autoencoder
    out = _vmap_multirun(
        tmp_path,
        "+pretrain=layerwise",
        "pretrain.layer_epochs=1",
        "pretrain.probe=false",
        "pretrain.baseline=false",
        "trainer.epochs=2",
        "trainer.seed=0,1",
    )
    assert "a layer-wise pipeline does not vectorise" in out
    for job in range(2):
        d = tmp_path / str(job)
        assert json.loads((d / "status.json").read_text())["status"] == "completed"
        metrics = json.loads((d / "metrics.json").read_text())
        assert "pretrain/layer_0/test/mse" in metrics and "unrolled/test/mse" in metrics
        assert (d / ".hydra" / "overrides.yaml").exists()
        log = (d / "train.log").read_text()  # its own lines, as under the basic launcher
        assert "layer 0:" in log and f"outputs in {d}" in log
        assert f"outputs in {tmp_path / str(1 - job)}" not in log


def test_sixteen_members_over_eight_devices_equal_their_sequential_runs(tmp_path, caplog):
    # conftest gives 8 fake CPU devices: the members axis is split over them, 2 per device.
    # Members differ in masking noise, KL sparsity strength and seed; each must equal its own
    # single-device sequential run to the same tolerance as the one-device engine (rel 2e-4).
    import logging

    common = (
        "trainer.epochs=4",
        "trainer.devices=null",
        "noise=masking",
        "reg=kl_sparse",
        "model.code_activation=sigmoid",
        "noise.eval_level=0.25",
    )
    configs = [make_config(*common, *_member_overrides(i)) for i in range(16)]
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        vec = train_vectorized(configs, [tmp_path / f"vec{i}" for i in range(16)])
    assert "16 members over 8 devices, 2 per device" in caplog.text
    assert "each 2 members of one seed share their random draws" in caplog.text
    for i in range(16):  # the sequential runs on one device (make_config's default)
        cfg = make_config(*common[:1], *common[2:], *_member_overrides(i))
        seq = train_and_evaluate(cfg, tmp_path / f"seq{i}")
        for key in ("test/mse", "test/denoise_mse", "test/mean_code_activation", "train/loss"):
            assert vec[i][key] == pytest.approx(seq[key], rel=2e-4, abs=1e-6), (i, key)


def _member_overrides(i: int) -> tuple[str, ...]:
    return (
        f"noise.level={0.05 * (i % 6)}",
        f"reg.kl_sparse.strength={0.02 * (i % 4)}",
        f"trainer.seed={i // 2}",
    )


@pytest.mark.parametrize(
    ("members", "devices", "layout"),
    [
        (2, 4, "2 members over 4 devices: 2 x 2 (members x data)"),
        (3, 8, "3 members over 6 of 8 devices: 3 x 2 (members x data)"),
        (1, 4, "1 member over 4 devices: 1 x 4 (members x data)"),
    ],
)
def test_fewer_members_than_devices_split_each_batch_over_a_data_axis(
    tmp_path, caplog, members, devices, layout
):
    # Members on a (members x data) mesh: each member's batch is split over the data axis and
    # its gradients averaged there, as a data-parallel single run. Each member must equal its
    # sequential single-device run (rel 2e-4, as above), noise and KL sparsity included.
    import logging

    common = (
        "trainer.epochs=4",
        "noise=masking",
        "reg=kl_sparse",
        "model.code_activation=sigmoid",
        "noise.eval_level=0.25",
    )
    configs = [
        make_config(*common, f"trainer.devices={devices}", *_member_overrides(i + 5))
        for i in range(members)
    ]
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        vec = train_group(configs, [tmp_path / f"vec{i}" for i in range(members)])
    assert layout in caplog.text
    for i in range(members):
        seq = train_and_evaluate(
            make_config(*common, *_member_overrides(i + 5)), tmp_path / f"seq{i}"
        )
        for key in ("test/mse", "test/denoise_mse", "test/mean_code_activation", "train/loss"):
            assert vec[i][key] == pytest.approx(seq[key], rel=2e-4, abs=1e-6), (i, key)


@pytest.mark.parametrize(
    ("seeds", "blocks", "runs"),
    [
        ([0, 0, 0, 0, 1, 1, 1, 1], 2, 4),  # one seed per device
        ([0, 0, 0, 0, 1, 1, 1, 1], 1, 4),
        ([0, 0, 0, 0, 0, 0, 0, 0], 2, 4),  # a run is cut where a device's block ends
        ([0, 0, 1, 1, 1, 1], 1, 2),  # runs of 2 and 4 tile as runs of 2
        ([0, 0, 1, 1, 1, 1], 2, 1),  # blocks [0 0 1] [1 1 1]: a run of 1
        ([0, 1, 2, 3], 1, 1),
    ],
)
def test_members_of_one_seed_share_draws_in_runs_that_tile_every_device(seeds, blocks, runs):
    assert shared_draws(seeds, blocks) == runs


def test_members_in_any_seed_order_share_draws_and_keep_their_own_results(tmp_path, caplog):
    # Hydra lists a levels x seeds grid with the seeds interleaved: the group trains them side
    # by side by seed (2 per device, sharing their data order and noise bits) and hands each
    # member's metrics and files back in the caller's order, each equal to its sequential run.
    import logging

    common = ("trainer.epochs=4", "noise=masking", "reg=kl_sparse", "model.code_activation=sigmoid")
    members = [
        (f"noise.level={level}", f"reg.kl_sparse.strength={strength}", f"trainer.seed={seed}")
        for level, strength, seed in [(0.1, 0.0, 1), (0.2, 0.02, 0), (0.3, 0.04, 1), (0.0, 0.06, 0)]
    ]
    configs = [make_config(*common, "trainer.devices=2", *m) for m in members]
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        vec = train_group(configs, [tmp_path / f"vec{i}" for i in range(4)])
    assert "4 members over 2 devices, 2 per device, each 2 members" in caplog.text
    for i, m in enumerate(members):
        seq = train_and_evaluate(make_config(*common, *m), tmp_path / f"seq{i}")
        for key in ("test/mse", "test/mean_code_activation", "train/loss"):
            assert vec[i][key] == pytest.approx(seq[key], rel=2e-4, abs=1e-6), (i, key)
        saved = json.loads((tmp_path / f"vec{i}" / "metrics.json").read_text())
        assert saved["test/mse"] == vec[i]["test/mse"]
    assert len({round(v["test/mse"], 6) for v in vec}) == 4


def test_a_group_resumes_its_checkpoint_when_only_settings_a_run_may_change_differ(tmp_path):
    # A killed group rerun with trainer.devices=2 or trainer.log_every=50 trained again from
    # epoch 1 beside its orphaned checkpoint: the key named every setting of the program.
    from ae_jax.sweeps.vectorized import group_checkpoint_dir

    dirs = [tmp_path / "0", tmp_path / "1"]

    def key(*extra):
        return group_checkpoint_dir(
            [make_config("noise=masking", f"noise.level={v}", *extra) for v in (0.1, 0.2)], dirs
        )

    same = key()
    for extra in ("trainer.devices=2", "trainer.log_every=50", "logger=csv", "trainer.epochs=9"):
        assert key(extra) == same, extra
    for extra in ("optim.lr=0.01", "model.latent_dim=4", "trainer.batch_size=32"):
        assert key(extra) != same, extra


def test_a_groups_progress_shows_each_members_held_out_error_as_a_run_does(tmp_path):
    """A single run's progress line shows its val (or eval) MSE where it evaluated; a group's
    showed only the members' training losses."""
    out = _vmap_multirun(tmp_path, "data.validation=0.1", "optim.lr=1e-3,1e-2", "trainer.epochs=10")
    line = next(x for x in out.splitlines() if "epoch 10/10 | losses 0 " in x)
    for job in range(2):
        val = json.loads((tmp_path / str(job) / "history.jsonl").read_text().splitlines()[-1])
        assert f"{job} {val['val/mse']:.5g}" in line.split("| val mse ")[1], line
