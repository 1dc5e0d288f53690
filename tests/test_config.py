"""Every shipped config composes and validates; every bad value fails early and says why."""

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_config, train
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigKeyError, ValidationError

from ae_jax.config import ConfigError, validate
from ae_jax.data import DataError
from ae_jax.training.parallel import fit_batch

GROUPS = ("model", "data", "noise", "reg", "loss", "optim", "trainer")


def _options(group):
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override", [f"{g}={o}" for g in GROUPS for o in _options(g)], ids=lambda s: s
)
def test_every_group_option_composes_and_validates(override):
    extra = {
        "reg=kl_sparse": ["model=shallow"],
        "data=array": ["data.path=x.npy"],
    }.get(override, [])
    cfg = make_config(override, *extra)
    validate(cfg)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.latent_dim=0"], r"model.latent_dim=0 .*positive integer"),
        (["model.depth=-1"], r"model.depth=-1"),
        (["model.widths=[32]"], r"model.widths=\[32\] has 1 entries but model.depth=2"),
        # the MLP's layer settings under a conv model were ignored: the same run either way
        (["model=conv", "model.depth=3"], r"model.depth=3 has no effect with model.kind=conv"),
        (
            ["model=conv", "model.decoder_widths=[32]"],
            r"model.decoder_widths=\[32\] has no effect with model.kind=conv, whose layers are "
            r"model.channels=\[32, 64\]",
        ),
        (
            ["model.activation=swish"],
            r"model.activation='swish' .*sigmoid, tanh, relu, gelu, linear",
        ),
        (["noise=masking", "noise.level=1.5"], r"noise.level=1.5 .*\[0.0, 1.0\]"),
        (["noise=gaussian", "noise.level=-0.1"], r"noise.level=-0.1"),
        (["noise.level=0.3"], r"noise.level=0.3 with noise.kind=none"),
        (
            ["model.sparse_k=9"],
            r"model.sparse_k=9 is larger than the code \(model.latent_dim=8\)",
        ),
        (["reg=kl_sparse"], r"model.code_activation='linear'.*set model.code_activation=sigmoid"),
        (
            ["reg=kl_sparse", "model=shallow", "reg.kl_sparse.target=1.5"],
            r"reg.kl_sparse.target=1.5",
        ),
        (["reg=l1", "reg.l1.strength=-1"], r"reg.l1.strength=-1"),
        # both accepted without a word: no test/denoise_mse came of the first, and the second
        # only scaled the loss (every element counts as corrupted)
        (["noise.eval_level=0.3"], r"noise.eval_level=0.3 with noise.kind=none measures nothing"),
        (
            ["noise=gaussian", "noise.level=0.3", "noise.alpha=2"],
            r"noise.alpha=2(\.0)? / noise.beta=1(\.0)? weigh .* noise=gaussian corrupts every",
        ),
        (  # accepted, it turned the penalty off: the running estimate never left the target
            [
                "reg=kl_sparse",
                "model=shallow",
                "reg.kl_sparse.estimate=running",
                "reg.kl_sparse.momentum=1.0",
            ],
            r"reg.kl_sparse.momentum=1.0 must be a number in \[0, 1\) \(at 1 the running",
        ),  # fmt: skip
        # one range for both (-1 was told [0.0, inf], which 0 is in, and 0 was told > 0)
        (["optim.lr=0"], r"optim.lr=0(\.0)? is not valid; it must be a finite number > 0\.0$"),
        (["optim.lr=-1"], r"optim.lr=-1(\.0)? is not valid; it must be a finite number > 0\.0$"),
        (
            ["optim.grad_clip=0"],
            r"optim.grad_clip=0(\.0)? is not valid; it must be a finite number > 0.*or null",
        ),
        (
            ["optim.grad_clip=-1"],
            r"grad_clip=-1(\.0)? is not valid; it must be a finite number > 0 \(the",
        ),
        (["trainer.epochs=0"], r"trainer.epochs=0"),
        (  # a 32-bit integer in the programs: it was an OverflowError after the data loaded
            ["trainer.seed=1099511627776"],
            r"trainer.seed=1099511627776 is not valid; .*integer in \[-2\*\*31, 2\*\*31\)",
        ),
        (["loss=bce", "model.output_activation=linear"], r"loss=bce .*output_activation=linear"),
        (["data.test_fraction=1.0"], r"data.test_fraction=1.0"),
        (["trainer.checkpoint_every=-1"], r"trainer.checkpoint_every=-1 .*or null"),
        (["trainer.checkpoint_seconds=0"], r"trainer.checkpoint_seconds=0(\.0)? is not valid.*> 0"),
        (["trainer.checkpoint_seconds=-5"], r"trainer.checkpoint_seconds=-5"),
        (
            ["+pretrain=layerwise", "pretrain.probe_l2=[1e-4,1e-2]"],
            r"probe_l2=\[0.0001, 0.01\] lists 2 values.*set data.validation",
        ),
        (["+pretrain=layerwise", "pretrain.probe_l2=[-1]"], r"pretrain.probe_l2=\[-1.0\]"),
        (["+pretrain=layerwise", "pretrain.probe_l2=[]"], r"pretrain.probe_l2=\[\] is not valid"),
    ],
)
def test_bad_values_are_refused_with_a_message_naming_them(overrides, match):
    with pytest.raises(ConfigError, match=match):
        validate(make_config(*overrides))


def test_bce_on_data_outside_unit_interval_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"loss=bce needs data in \[0, 1\].*spans \[-"):
        train(tmp_path, "loss=bce", "data.scaling=standardize")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(MissingConfigException) as err:
        make_config("data=imagenet")
    for name in _options("data"):
        assert name in str(err.value)


def test_unknown_group_option_and_key_are_refused():
    with pytest.raises(MissingConfigException, match="masking"):
        make_config("noise=dropout")
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)):
        make_config("model.latent_size=3")  # a typo of latent_dim
    with pytest.raises((ConfigCompositionException, ValidationError)):
        make_config("model.latent_dim=eight")


def test_missing_data_file_is_named(tmp_path):
    missing = tmp_path / "nope.npy"
    with pytest.raises(DataError, match="nope.npy"):
        train(tmp_path, "data=array", f"data.path={missing}")


def test_data_of_the_wrong_shape_is_named(tmp_path):
    path = tmp_path / "flat.npy"
    np.save(path, np.arange(10.0))
    with pytest.raises(DataError, match=r"flat.npy"):
        train(tmp_path, "data=array", f"data.path={path}")


def test_conv_model_on_tabular_data_is_refused(tmp_path):
    path = tmp_path / "table.npy"
    np.save(path, np.random.default_rng(0).random((100, 5)))
    with pytest.raises(ConfigError, match=r"model=conv needs image data.*\(5,\)"):
        train(tmp_path, "data=array", f"data.path={path}", "model=conv", "trainer.batch_size=16")


def test_a_batch_larger_than_the_data_trains_on_whole_splits(tmp_path, caplog):
    """The default 64 on a small table, or a large value meaning "full batch": every step
    takes the whole training split, said in one line; one that the devices cannot split
    evenly is refused in one line."""
    caplog.set_level("INFO", logger="ae_jax")
    run = ("trainer.batch_size=5000", "trainer.epochs=3", "trainer.figures=false")
    train(tmp_path / "one", *run, "trainer.devices=1")
    assert (
        "trainer.batch_size=5000 exceeds the 1437 training examples of digits: every step "
        "takes the whole training split (batches of 1437)" in caplog.text
    )
    assert "3 epochs x 1 step of 1437" in caplog.text  # one step an epoch
    assert fit_batch(5000, 1432, 8, "trainer.batch_size", "digits") == 1432  # 179 a device
    with pytest.raises(ConfigError, match=r"batches of all 1437 do not split evenly over 8"):
        train(tmp_path / "eight", *run, "trainer.devices=8")


def test_uneven_device_split(tmp_path):
    with pytest.raises(ConfigError, match=r"batch_size=60 does not split evenly across 8"):
        train(tmp_path, "trainer.batch_size=60", "trainer.devices=8")
    with pytest.raises(ConfigError, match=r"trainer.devices=64 but only 8"):
        train(tmp_path, "trainer.devices=64")


def test_earlier_results_survive_a_failed_run(tmp_path):
    from ae_jax.config import to_yaml

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "metrics.json").write_text('{"test/mse": 0.5}')
    # the earlier run's record (without it the directory is refused at once, as damaged)
    (workdir / "config.yaml").write_text(to_yaml(make_config("trainer.batch_size=60")))
    with pytest.raises(ConfigError):  # refused once the data is loaded and the run claimed
        train(tmp_path, "trainer.batch_size=60", "trainer.devices=8")
    assert Path(workdir / "metrics.json").read_text() == '{"test/mse": 0.5}'


def _omegaconf_yaml(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


@pytest.mark.parametrize(
    "overrides",
    [[f"+experiment={p.stem}"] for p in sorted((REPO / "conf" / "experiment").glob("*.yaml"))]
    + [
        ["model=shallow", "model.code_activation=sigmoid", "reg=[kl_sparse,weight_decay]"],
        ["logger=[tensorboard,csv]", "noise=masking", "noise.level=0.25", "optim.lr=1"],
        ["reg=contractive", "reg.contractive.strength=2", "data.validation=5000"],
    ],
    ids=lambda o: " ".join(o),
)
def test_config_yaml_is_omegaconfs_text(overrides):
    """``to_yaml`` writes config.yaml without building an OmegaConf tree (a sweep asks for it
    once per member); its text must stay exactly OmegaConf's."""
    from ae_jax.config import to_yaml

    cfg = make_config(*overrides)
    assert to_yaml(cfg) == _omegaconf_yaml(cfg)


def test_config_yaml_turns_ints_in_float_fields_into_floats_as_omegaconf_does():
    import dataclasses

    from ae_jax.config import to_yaml

    cfg = make_config("+pretrain=layerwise", "reg=contractive")
    cfg = dataclasses.replace(
        cfg,
        optim=dataclasses.replace(cfg.optim, lr=1, grad_clip=2),
        data=dataclasses.replace(cfg.data, validation=5000),
        pretrain=dataclasses.replace(cfg.pretrain, probe_l2=[1, 0.001]),
        reg={"contractive": dataclasses.replace(cfg.reg["contractive"], strength=3)},
    )
    text = to_yaml(cfg)
    assert text == _omegaconf_yaml(cfg)
    assert "lr: 1.0\n" in text and "validation: 5000.0\n" in text and "- 1.0\n" in text


def test_the_description_line_names_every_setting_that_changes_training():
    """The run's first line names a k-sparse code, a schedule, decoupled decay, clipping and the
    precision when they are set, and stays short when they are not."""
    from ae_jax.data import load_dataset
    from ae_jax.outputs import describe
    from ae_jax.training.trainer import Trainer

    def line(*overrides):
        cfg = validate(make_config(*overrides))
        return describe(cfg, Trainer(cfg, load_dataset(cfg.data)))

    plain = line()
    assert "adam lr 0.001 | 300 epochs" in plain and "top-" not in plain
    assert "float32" not in plain
    dressed = line(
        "model.sparse_k=3",
        "model.sparse_k_start=6",
        "model.sparse_anneal_epochs=2",
        "model.sparse_k_features=5",
        "optim=adamw",
        "optim.schedule=cosine",
        "optim.grad_clip=1",
        "trainer.precision=bfloat16",
    )
    assert "(gelu, code linear) top-3 (from 6 over 2 epochs), features top-5 ->" in dressed
    # an asymmetric decoder is said (the line showed the encoder's widths alone)
    assert "| mlp 64-64-32-8, decoder 8-16-64 (gelu" in line("model.decoder_widths=[16]")
    assert "| adamw lr 0.001 cosine, decay 0.0001, clip 1.0 | bfloat16 |" in dressed
    # a vectorised group's line: what its members vary, as sets
    members = [
        validate(make_config("noise=masking", f"noise.level={v}", "reg=l1", f"optim.lr={lr}"))
        for v, lr in ((0.2, 1e-3), (0.0, 1e-3), (0.1, 1e-3))
    ]
    group = describe(members[0], Trainer(members[0], load_dataset(members[0].data)), False, members)
    assert "| noise masking:{0.0,0.1,0.2} | reg l1:0.0001 | adam lr 0.001 | 300 epochs" in group
    assert "in the members' order" not in group
    # a grid of two settings: their sets say it all; a search's trials pair values in no grid
    # way, and two sorted sets were read position by position as trials (and printed whole)
    grid = [
        validate(make_config("reg=l1", f"reg.l1.strength={s}", f"optim.lr={lr}"))
        for s in (1e-4, 1e-3)
        for lr in (1e-3, 3e-3)
    ]
    group = describe(grid[0], Trainer(grid[0], load_dataset(grid[0].data)), False, grid)
    assert "| reg l1:{0.0001,0.001} | adam lr {0.001,0.003} | 300 epochs" in group
    trials = [
        validate(make_config("reg=l1", f"reg.l1.strength={s}", f"optim.lr={lr}"))
        for s, lr in ((0.007257005721594277, 0.00443037524521), (0.0015119336467641, 0.0064311))
    ]
    group = describe(trials[0], Trainer(trials[0], load_dataset(trials[0].data)), False, trials)
    assert "| reg l1:[0.007257,0.001512] | adam lr [0.00443,0.006431] | 300 epochs" in group
    assert group.endswith("| [...]: each member's value, in the members' order")
    # an unrolled stack that is not fine-tuned: no objective or schedule it does not train on
    cfg = validate(make_config("trainer.epochs=1"))
    note = describe(cfg, Trainer(cfg, load_dataset(cfg.data)), untrained="as is")
    assert note.endswith("-> sigmoid | as is on 1 cpu device") and "epoch" not in note
    assert "| 1 epoch x 22 steps of 64 on" in line("trainer.epochs=1")


def test_compose_gives_python_the_command_lines_config(tmp_path):
    # The README's Python example built Config(), the dataclasses' defaults (200 epochs, no
    # logger), and trained another run than `train.py model.latent_dim=16`.
    from ae_jax.config import compose, config_dict, validate

    cfg = compose("model.latent_dim=16")
    assert (cfg.trainer.epochs, list(cfg.logger), cfg.model.latent_dim) == (
        300,
        ["tensorboard"],
        16,
    )
    shrunk = ("trainer.figures=false", "trainer.devices=1", "trainer.progress=false")
    same = compose("model.latent_dim=16", *shrunk)  # make_config: conf/ as Hydra composes it
    assert config_dict(same) == config_dict(validate(make_config("model.latent_dim=16")))
    with pytest.raises(ConfigError, match="did you mean model.latent_dim"):
        compose("model.latent_dimm=3")
    with pytest.raises(ConfigError, match=f"{tmp_path} holds no config.yaml"):
        compose(conf_dir=tmp_path)
