"""Composable objective terms, the registries behind every list of names, one model interface.

* ``reg`` is a mapping term -> config; the loss is ``rec + sum strength * term`` and the history
  logs ``train/loss/<term>`` (weighted) beside ``train/loss/rec``, global-batch values on any
  number of devices;
* a term registered in a test (one function + one dataclass) trains like the built-in ones;
* every registered optimiser builds and steps; the config refuses names the registries lack,
  listing the registered ones;
* the model's own ``encode`` (what ``ae_jax.features`` uses) gives the codes training used.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO, make_config

from ae_jax.config import (
    Config,
    ConfigError,
    OptimConfig,
    check_overrides,
    load_config,
    to_yaml,
    validate,
)
from ae_jax.data import load_dataset
from ae_jax.registry import (
    ACTIVATIONS,
    CORRUPTIONS,
    OPTIMIZERS,
    RECONSTRUCTION_LOSSES,
    REGULARIZERS,
    SCHEDULES,
    TermConfig,
)
from ae_jax.train import train_and_evaluate
from ae_jax.training.objective import make_hparams
from ae_jax.training.state import make_optimizer
from ae_jax.training.trainer import Trainer


def _history(workdir):
    return [json.loads(line) for line in (workdir / "history.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- config and registries


def test_reg_is_a_mapping_of_registered_terms_and_round_trips(tmp_path):
    cfg = make_config(
        "model=shallow",
        "reg=[kl_sparse,weight_decay]",
        "reg.kl_sparse.strength=3",
        "reg.weight_decay.strength=1e-4",
    )
    validate(cfg)
    assert list(cfg.reg) == ["kl_sparse", "weight_decay"]
    assert cfg.reg["kl_sparse"].strength == 3 and cfg.reg["kl_sparse"].target == 0.05
    assert type(cfg.reg["kl_sparse"]) is REGULARIZERS.entry("kl_sparse").config
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.reg == cfg.reg
    hp = make_hparams(cfg)
    assert set(hp) == {"noise_level", "lr", "reg/kl_sparse", "reg/weight_decay"}
    assert float(hp["reg/kl_sparse"]) == 3.0
    assert make_config().reg == {} and set(make_hparams(make_config())) == {"noise_level", "lr"}


def test_unknown_term_and_misspelt_key_are_refused_naming_what_is_valid():
    cfg = Config()
    cfg.reg = {"l2": {"strength": 1.0}}
    with pytest.raises(ConfigError, match=r"reg.l2 .*registered: l1, kl_sparse, contractive"):
        validate(cfg)
    cfg.reg = {"kl_sparse": {"strenght": 1.0}}
    with pytest.raises(ConfigError, match=r"reg.kl_sparse.strenght .*valid: strength, target"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"reg.kl_sparse.strenght"):
        check_overrides(["model=shallow", "reg=kl_sparse", "reg.kl_sparse.strenght=1"])
    with pytest.raises(ConfigError, match=r"'foo', which is not a registered"):
        check_overrides(["reg=[kl_sparse,foo]"])
    check_overrides(["reg=[kl_sparse,weight_decay]", "reg.kl_sparse.strength=3", "reg=none"])


def test_a_setting_of_an_unselected_term_is_one_line():
    with pytest.raises(ConfigError, match=r"reg.kl_sparse.strength=1 sets term 'kl_sparse'.*reg="):
        check_overrides(["reg.kl_sparse.strength=1"])
    with pytest.raises(ConfigError, match=r"does not select"):
        check_overrides(["reg=l1", "reg.kl_sparse.target=0.1"])
    check_overrides(["reg=kl_sparse", "reg.kl_sparse.strength=1"])
    check_overrides(["+reg.kl_sparse.strength=1"])  # adds the term: Hydra's own syntax
    # an experiment or sweep file may select the term: left to Hydra
    check_overrides(["+experiment=rifai2011_cae_mnist", "reg.contractive.strength=1"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer.epoch=3"],
            r"^trainer.epoch is not a setting of trainer; did you mean trainer.epochs\?$",
        ),
        (["+trainer.epoch=3"], r"did you mean trainer.epochs"),  # added, nothing would read it
        (["data.zzz=1"], r"not a setting of data; its settings: source, name, "),
        (["data.validation=abc"], r"^data.validation=abc is not valid; it must be a number$"),
        (["trainer.epochs=2.5"], r"trainer.epochs=2.5 .*a whole number$"),
        (["model.tied=maybe"], r"model.tied=maybe .*true or false$"),
        (["model.tied=2"], r"^model.tied=2 is not valid; it must be true or false$"),  # was true
        (["model.widths=[a,b]"], r"model.widths=\[a,b\] .*list of whole numbers.* or null$"),
        (["-m", "optim.lr=1e-3,abc"], r"^optim.lr=abc is not valid; it must be a number$"),
        (["optim.lr=1e-3,3e-3"], r"gives several values; add --multirun"),
        (["trainer.seed=range(0,3)"], r"gives several values; add --multirun"),
        (["model=shalow"], r"^model=shalow names no file conf/model/shalow.yaml \(did you mean"),
        (["+experiment=nope"], r"experiment=nope names no file .*choose one of: hinton2006_mnist"),
        (["-m", "data=digits,nope"], r"data=nope names no file"),
        (["logger=tensorbord"], r"^logger=tensorbord names 'tensorbord', .*did you mean tensorb"),
        (["logger=[csv,mlflw]"], r"names 'mlflw', .*conf/logger/mlflw.yaml .*mlflow\?"),
        # a setting without its group: +lr was added, read by nothing, and lr 1e-3 trained
        (["+lr=0.1"], r"^lr is not a setting; did you mean optim.lr\?$"),
        (["seed=3"], r"^seed is not a setting; did you mean trainer.seed\?$"),
        (["+foo=1"], r"^foo is not a setting; the settings are data, logger, "),
        # the schemas register_configs stores are valid, but not offered as choices
        (["model=mlpp"], r"choose one of: conv, linear, mlp, shallow$"),
        # Hydra's own groups and keys: Hydra said these in four to eight lines
        (["hydra/launcher=vmapp"], r"^hydra/launcher=vmapp: .*did you mean hydra/launcher=vmap\?"),
        (["-m", "hydra/sweeper=optuna2"], r"did you mean hydra/sweeper=optuna\?\); choose one "),
        (["experiment=rifai2011_cae_mnist"], r"write it with a \+: \+experiment=rifai2011_cae"),
        (["experiment=rifai2011_cae"], r"did you mean \+experiment=rifai2011_cae_mnist\?"),
        (["hydra.foo=1"], r"^hydra.foo=1: hydra has no setting 'foo'; its settings: defaults, "),
        (["hydra.run.dirr=x"], r"^hydra.run.dirr=x: .*did you mean hydra.run.dir\?$"),
        # keys below Hydra's schema: those of the launcher and sweeper chosen, or of a mapping
        (["hydra.launcher.n_jobs=2"], r"hydra.launcher \(hydra/launcher=basic\) has no setting"),
        (
            ["-m", "+sweep=optuna_contractive", "hydra.sweeper.n_trails=3"],
            r"\(hydra/sweeper=optuna\) has no setting 'n_trails'; did you mean .*n_trials\?$",
        ),
        (["hydra.sweeper.params.x=1"], r"is empty under this sweeper .*the key itself.*: x=a,b$"),
        (["hydra.job.env_set.FOO=1"], r"has no key 'FOO'; \(a new key is added with a \+: \+hy"),
        (["hydra.job_logging.roott.level=INFO"], r"did you mean hydra.job_logging.root\? "),
        # values Hydra's grammar cannot read: its parser's caret and a link, in several lines
        (["data.path=~/x.csv"], r"quote it for Hydra inside the shell's quotes: 'data.path=\"~/x"),
        (["data.path=/d/data (1).csv"], r"^data.path=/d/data \(1\).csv cannot be read by Hydra:"),
        (["data.path=x[1].csv"], r"'data.path=\"x\[1\].csv\"'$"),
        (["model.widths=[1,2"], r"^model.widths=\[1,2 cannot be read by Hydra \(no viable .*brack"),
    ],
)
def test_a_wrong_key_value_or_option_is_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_overrides(overrides, conf_dir=str(REPO / "conf"))


def test_options_in_a_users_own_config_folder_are_found(tmp_path):
    """A user's option files (``--config-dir`` / ``-cd``, ``hydra.searchpath=[file://...]``)
    are options like the project's own; a misspelt one is named with both places to look."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mywine.yaml").write_text("defaults:\n  - array\n  - _self_\n")
    conf = str(REPO / "conf")
    for overrides in (
        ["-cd", str(tmp_path), "data=mywine"],
        [f"--config-dir={tmp_path}", "data=mywine", "model=shallow"],
        [f"hydra.searchpath=[file://{tmp_path}]", "data=mywine"],
        ["hydra.searchpath=[pkg://elsewhere.conf]", "data=anything"],  # known only to Hydra
        ["--config-path", "/elsewhere", "data=anything"],
    ):
        check_overrides(overrides, conf_dir=conf)
    with pytest.raises(ConfigError, match=r"^data=mywin names no file conf/data/mywin.yaml or "):
        check_overrides(["-cd", str(tmp_path), "data=mywin"], conf_dir=conf)
    with pytest.raises(ConfigError, match=r"did you mean data=mywine\?"):
        check_overrides(["-cd", str(tmp_path), "data=mywin"], conf_dir=conf)
    with pytest.raises(ConfigError, match=r"^data=mywine names no file conf/data/mywine.yaml;"):
        check_overrides(["data=mywine"], conf_dir=conf)  # without the user's folder


def test_valid_overrides_pass_the_check():
    conf = str(REPO / "conf")
    for overrides in (
        ["model=base_model", "model.widths=[32,16]", "data.path=null", "optim.lr=3e-3"],
        ["--multirun", "trainer.seed=range(0,3)", "noise.level=0,0.1", "data=digits,mnist"],
        ["-m", "optim.lr=choice(1e-3,1e-2)", "optim.lr=tag(log,interval(1e-4,1e-2))"],
        ["+experiment=rifai2011_cae_mnist", "~trainer.seed", "trainer.epochs=${trainer.seed}"],
        ["data.validation=5000", "trainer.epochs=3", "hydra/launcher=vmap", "hydra.run.dir=x"],
        ["model.kind=linear", "score=val/mse", "name=x", "logger=tensorboard"],
        ["hydra.job.chdir=true", "+hydra.job.env_set.FOO=1", "hydra.job_logging.root.level=INFO"],
        [
            "-m",
            "+sweep=optuna_contractive",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.sampler.seed=1",
        ],
        ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "hydra.verbose=true"],
        ["--config-name", "config", "+experiment=rifai2011_cae_mnist", "+sweep=noise"],
    ):
        check_overrides(overrides, conf_dir=conf)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["trainer.epoch=3"], "trainer.epoch"),
        (["data.validation=abc"], "data.validation"),
        (["model=shalow"], "model"),
        (["optim.lr=1e-3,1e-2"], "optim.lr"),
        (["model=shallow", "reg=kl_sparse", "reg.kl_sparse.strenght=1"], "strength"),
    ],
)
def test_a_wrong_key_value_or_option_exits_2_in_one_line(tmp_path, arguments, named):
    proc = subprocess.run(
        [sys.executable, "experiments/train.py", f"hydra.run.dir={tmp_path}", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2, out
    assert len(out.splitlines()) == 1 and out.startswith("ConfigError: "), out
    assert arguments[-1].partition("=")[0] in out and named in out
    assert "Traceback" not in out
    assert not any(tmp_path.iterdir())  # refused before a run directory was written


@pytest.mark.parametrize(
    ("overrides", "registry"),
    [
        (["optim.name=adamx"], OPTIMIZERS),
        (["optim.schedule=linear"], SCHEDULES),
        (["noise.kind=dropout"], CORRUPTIONS),
        (["loss.kind=huber"], RECONSTRUCTION_LOSSES),
        (["model.activation=swish"], ACTIVATIONS),
    ],
)
def test_validation_lists_the_registered_names(overrides, registry):
    with pytest.raises(ConfigError) as err:
        validate(make_config(*overrides))
    assert ", ".join(registry.names()) in str(err.value)


def test_pretrain_optimisers_validate_against_the_registry():
    with pytest.raises(ConfigError, match="pretrain.layer_optim='lbfgs'.*adam, adamw, sgd"):
        validate(make_config("+pretrain=layerwise", "pretrain.layer_optim=lbfgs"))
    with pytest.raises(ConfigError, match="pretrain.supervised_optim='adamx'"):
        validate(make_config("+pretrain=layerwise", "pretrain.supervised_optim=adamx"))
    for name in OPTIMIZERS:
        if not OPTIMIZERS.entry(name).info.get("weight_decay"):
            validate(make_config("+pretrain=layerwise", f"pretrain.supervised_optim={name}"))


def test_adamw_needs_a_weight_decay_and_others_refuse_one():
    with pytest.raises(ConfigError, match="optim.name=adamw needs optim.weight_decay > 0"):
        validate(make_config("optim.name=adamw"))
    validate(make_config("optim=adamw"))
    with pytest.raises(ConfigError, match="optim.weight_decay=0.1 has no effect"):
        validate(make_config("optim.weight_decay=0.1"))


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_registered_optimiser_builds_and_steps(name):
    cfg = make_config(f"optim.name={name}", *(["optim.weight_decay=1e-2"] * (name == "adamw")))
    validate(cfg)
    tx = make_optimizer(cfg.optim, total_steps=10, steps_per_epoch=5)
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}
    grads = jax.tree.map(lambda p: 0.5 * p, params)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    lr = 1e-2  # the step multiplies the direction by the traced lr
    new = optax.apply_updates(params, jax.tree.map(lambda u: lr * u, updates))
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params), strict=True):
        assert np.all(np.isfinite(a)) and np.all(np.asarray(a) < np.asarray(b))  # descent


def test_adamw_decay_is_decoupled_and_scaled_by_the_traced_lr():
    opt = OptimConfig(name="adamw", weight_decay=0.1)
    tx = make_optimizer(opt, total_steps=10, steps_per_epoch=5)
    params = {"dense": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)}}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    lr = 1e-3
    step = jax.tree.map(lambda u: lr * u, updates)
    # no gradient: the update is -lr * wd * W on kernels, nothing on biases
    np.testing.assert_allclose(step["dense"]["kernel"], -lr * 0.1 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(step["dense"]["bias"], 0.0)


# ---------------------------------------------------------------- a term registered here


@dataclasses.dataclass
class L2ActivityConfig(TermConfig):
    strength: float = 1e-2


def l2_activity(cfg: L2ActivityConfig, inp) -> jax.Array:
    """mean_b sum_j h_bj^2: a Gaussian prior on the code."""
    return jnp.mean(jnp.sum(jnp.square(inp.code), axis=-1))


@pytest.fixture
def l2_term():
    REGULARIZERS.register("l2_activity", l2_activity, config=L2ActivityConfig)
    yield "l2_activity"
    REGULARIZERS.unregister("l2_activity")


def test_a_term_registered_at_runtime_trains_and_is_logged(tmp_path, l2_term):
    codes = {}
    for strength in (0.0, 0.1):
        cfg = make_config("model.latent_dim=16", "trainer.epochs=15", "trainer.eval_every=5")
        cfg.reg = {l2_term: {"strength": strength}}
        workdir = tmp_path / f"s{strength}"
        train_and_evaluate(cfg, workdir)
        last = _history(workdir)[-1]
        assert "train/loss/l2_activity" in last and "train/loss/rec" in last
        total = last["train/loss/rec"] + last["train/loss/l2_activity"]
        assert last["train/loss"] == pytest.approx(total, rel=1e-5)
        z = np.load(workdir / "reconstructions.npz")["codes"]
        codes[strength] = float(np.mean(np.sum(z**2, axis=-1)))
    assert codes[0.1] < 0.5 * codes[0.0], codes


# ---------------------------------------------------------------- global-batch term values


def _fit_history(devices: int, overrides):
    cfg = make_config("trainer.epochs=2", f"trainer.devices={devices}", *overrides)
    trainer = Trainer(cfg, load_dataset(cfg.data))
    _, history, _ = trainer.fit(trainer.init_state())
    return history


@pytest.mark.parametrize(
    "overrides",
    [
        (
            "model=shallow",
            "model.latent_dim=32",
            "reg=[l1,kl_sparse,contractive,weight_decay]",
            "reg.l1.strength=1e-2",
        ),
        (
            "model.code_activation=sigmoid",
            "reg=[kl_sparse,contractive]",
            "reg.kl_sparse.estimate=running",
            "reg.contractive.method=autodiff",
        ),
    ],
    ids=["shallow_all_terms", "deep_autodiff_running_kl"],
)
def test_every_term_logs_the_same_value_on_8_devices_as_on_1(overrides):
    assert jax.device_count() >= 8, "tests/conftest.py sets 8 fake CPU devices"
    one = _fit_history(1, overrides)[-1]
    eight = _fit_history(8, overrides)[-1]
    terms = [k for k in one if k.startswith("train/loss/")]
    selected = next(o for o in overrides if o.startswith("reg="))[5:-1].split(",")
    assert sorted(terms) == sorted(["train/loss/rec", *(f"train/loss/{t}" for t in selected)])
    for key in [*terms, "train/loss"]:
        assert eight[key] == pytest.approx(one[key], rel=1e-5), key
    assert "train/loss/reg" not in one


# ---------------------------------------------------------------- the composed objective


def test_kl_sparsity_with_weight_decay_reaches_its_target(tmp_path):
    common = (
        "model=shallow",
        "model.latent_dim=128",  # overcomplete: 64 inputs
        "model.code_activation=sigmoid",
        "reg=[kl_sparse,weight_decay]",
        "reg.kl_sparse.target=0.05",
        "reg.weight_decay.strength=1e-4",
        "trainer.epochs=100",
    )
    free = train_and_evaluate(
        make_config(*common, "reg.kl_sparse.strength=0", "reg.weight_decay.strength=0"),
        tmp_path / "free",
    )
    sparse = train_and_evaluate(
        make_config(*common, "reg.kl_sparse.strength=0.1"), tmp_path / "sparse"
    )
    last = _history(tmp_path / "sparse")[-1]
    assert last["train/loss/kl_sparse"] > 0 and last["train/loss/weight_decay"] > 0
    assert abs(sparse["test/mean_code_activation"] - 0.05) < 0.02, sparse
    assert free["test/mean_code_activation"] > 0.25, free


# ---------------------------------------------------------------- one model interface


def test_features_are_the_codes_training_used_for_a_k_sparse_model(tmp_path):
    from ae_jax.features import embed, load_run, reconstruct

    cfg = make_config(
        "model.latent_dim=32",
        "model.sparse_k=5",
        "model.sparse_k_start=16",
        "model.sparse_anneal_epochs=2",
        "trainer.epochs=4",
    )
    train_and_evaluate(cfg, tmp_path)
    run = load_run(tmp_path)
    data = load_dataset(cfg.data)
    x = data.x_test[:100]
    features = embed(run, x)
    trainer = Trainer(cfg, data)
    end = jnp.int32(trainer.total_steps)  # the training path, with the annealed k at the end
    logits, recon, code, _ = trainer.objective.forward(run.params, jnp.asarray(x), end)
    np.testing.assert_array_equal(features != 0, np.asarray(code) != 0)  # the same k units
    np.testing.assert_allclose(features, np.asarray(code), rtol=1e-5, atol=1e-6)
    assert np.max(np.sum(features != 0, axis=1)) <= 5
    early = trainer.objective.forward(run.params, jnp.asarray(x), jnp.int32(0))[2]
    assert np.max(np.sum(np.asarray(early) != 0, axis=1)) == 16  # k_start while annealing
    model = trainer.objective.model
    np.testing.assert_allclose(reconstruct(run, x), np.asarray(recon), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        model.apply({"params": run.params}, jnp.asarray(features), method="reconstruct"),
        jax.nn.sigmoid(logits),
        rtol=1e-5,
        atol=1e-7,
    )


def test_metrics_json_holds_every_term_of_the_final_loss(tmp_path):
    # it kept train/loss and train/loss/rec only: the regulariser's share was in history alone
    from conftest import train

    m = train(tmp_path, "model=shallow", "reg=contractive", "trainer.epochs=2")
    assert m["train/loss"] == pytest.approx(m["train/loss/rec"] + m["train/loss/contractive"])
    assert m["train/loss/contractive"] > 0
