"""The paper reproductions in conf/experiment/: every file composes to the paper's setting, and
every smoke variant runs end to end through the same entry point as the full command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from ae_jax.config import register_configs, to_config, validate
from ae_jax.pretraining.config import validate_pretrain
from ae_jax.train import train_and_evaluate

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_experiment(name: str, mnist_path, *overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"+experiment={name}", f"data.path={mnist_path}", *overrides],
            return_hydra_config=False,
        )
    return validate(to_config(cfg))


def test_every_experiment_has_a_smoke_variant():
    full = [n for n in EXPERIMENTS if not n.endswith("_smoke")]
    assert {
        "hinton2006_mnist",
        "vincent2010_sdae_mnist",
        "rifai2011_cae_mnist",
        "pca_equivalence",
        "ng2011_sparse_ae_mnist",
        "makhzani2013_ksparse_mnist",
    } <= set(full)
    for name in (
        "hinton2006_mnist",
        "vincent2010_sdae_mnist",
        "rifai2011_cae_mnist",
        "pca_equivalence",
        "ng2011_sparse_ae_mnist",
        "makhzani2013_ksparse_mnist",
    ):
        assert f"{name}_smoke" in EXPERIMENTS
        text = (CONF / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_") and f"+experiment={name}" in text


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_validates(name, mnist_path):
    cfg = compose_experiment(name, mnist_path)
    validate_pretrain(cfg)
    assert cfg.data.source == "idx" and cfg.name == name


def test_full_experiments_follow_the_papers(mnist_path):
    h = compose_experiment("hinton2006_mnist", mnist_path)
    assert (list(h.model.widths), h.model.latent_dim) == ([1000, 500, 250], 30)
    assert (h.model.activation, h.model.code_activation, h.loss.kind) == (
        "sigmoid",
        "linear",
        "bce",
    )
    assert h.pretrain.enabled and h.pretrain.unsupervised and h.pretrain.baseline
    # the published run trains on all 60,000; the selection run, as its comment gives it
    assert h.data.validation == 0 and not h.trainer.early_stopping
    s = compose_experiment(
        "hinton2006_mnist", mnist_path, "data.validation=5000", "trainer.early_stopping=true"
    )
    assert (s.data.validation, s.trainer.early_stopping, s.trainer.patience) == (5000, True, 10)
    v = compose_experiment("vincent2010_sdae_mnist", mnist_path)
    assert (list(v.model.widths), v.model.latent_dim) == ([1000, 1000], 1000)
    assert (v.noise.kind, v.noise.level) == ("masking", 0.25)
    assert v.pretrain.supervised and v.pretrain.baseline and not v.pretrain.unsupervised
    cae, ae, wd = (
        compose_experiment(n, mnist_path)
        for n in ("rifai2011_cae_mnist", "rifai2011_ae_mnist", "rifai2011_ae_wd_mnist")
    )
    assert (cae.model.depth, cae.model.latent_dim, cae.model.tied) == (0, 1000, True)
    assert [list(c.reg) for c in (cae, ae, wd)] == [["contractive"], [], ["weight_decay"]]
    assert all(c.pretrain.supervised for c in (cae, ae, wd))

    # Rifai et al.'s fine-tuning, plain SGD on small batches (chosen on the CAE's validation
    # error, RESULTS.md); the SdA-3 keeps Adam, which its validation error preferred
    def recipe(c):
        p = c.pretrain
        return (p.supervised_optim, p.supervised_lr, p.supervised_schedule, p.supervised_batch_size)

    assert all(recipe(c) == ("sgd", 0.1, "constant", 10) for c in (cae, ae, wd))
    assert recipe(v) == ("adam", 1e-3, "cosine", None)
    # the layers' Adam rates, chosen on validation (RESULTS.md): SdA-3 3e-3, the rifai2011 rows'
    # shared layer 3e-3 (the run's own optimiser: pretrain.layer_lr unset)
    assert v.pretrain.layer_lr == 3e-3
    assert all((c.pretrain.layer_lr, c.optim.lr) == (None, 3e-3) for c in (cae, ae, wd))
    ng = compose_experiment("ng2011_sparse_ae_mnist", mnist_path)
    assert (ng.model.depth, ng.model.latent_dim, ng.model.code_activation) == (0, 196, "sigmoid")
    assert (ng.model.output_activation, ng.loss.kind) == ("sigmoid", "mse")
    assert list(ng.reg) == ["kl_sparse", "weight_decay"] and ng.reg["kl_sparse"].target == 0.05
    # Ng's beta = 3 and lambda = 1e-4 against 1/2 ||x - x_hat||^2, on our per-pixel mean loss
    assert ng.reg["kl_sparse"].strength == pytest.approx(3 * 2 / 784, rel=1e-3)
    assert ng.reg["weight_decay"].strength == pytest.approx(1e-4 * 2 / 784, rel=1e-3)
    p = compose_experiment("pca_equivalence", mnist_path)
    assert (p.model.kind, p.loss.kind, p.pretrain.enabled) == ("linear", "mse", False)


FAST = ("trainer.devices=1", "trainer.progress=false", "pretrain.probe=false")


def test_hinton_smoke(mnist_path, tmp_path):
    cfg = compose_experiment("hinton2006_mnist_smoke", mnist_path, *FAST)
    m = train_and_evaluate(cfg, tmp_path)
    # fine-tuning improves the unrolled stack; both numbers sit beside PCA's
    assert m["test/sse_per_example"] < m["unrolled/test/sse_per_example"]
    assert m["test/pca_sse_per_example"] > 0 and "baseline/test/sse_per_example" in m
    assert m["test/sse_per_example"] == pytest.approx(784 * m["test/mse"], rel=1e-4)


def test_vincent_smoke(mnist_path, tmp_path):
    cfg = compose_experiment("vincent2010_sdae_mnist_smoke", mnist_path, *FAST)
    m = train_and_evaluate(cfg, tmp_path)
    assert m["supervised/test/error_pct"] < 30.0  # chance: 90%
    assert "baseline/supervised/test/error_pct" in m
    assert m["pretrain/layer_1/test/denoise_mse"] > 0


def test_rifai_smoke(mnist_path, tmp_path):
    cfg = compose_experiment("rifai2011_cae_mnist_smoke", mnist_path, *FAST)
    m = train_and_evaluate(cfg, tmp_path)
    assert m["supervised/test/error_pct"] < 30.0
    assert m["pretrain/layer_0/test/jacobian_fro"] > 0


def test_pca_equivalence_smoke(mnist_path, tmp_path):
    cfg = compose_experiment("pca_equivalence_smoke", mnist_path, *FAST[:2])
    m = train_and_evaluate(cfg, tmp_path)
    # model=linear's own defaults on 5000 images: trainer.min_steps turns 30 epochs into 100,000
    # steps, and the linear AE lands on PCA (a random 5-d subspace of R^784 sits near 90 deg)
    assert 0.99 < m["test/mse_over_pca"] < 1.01
    assert m["test/subspace_angle_max_deg"] < 2.0


def test_ng2011_sparse_ae_smoke(mnist_path, tmp_path):
    cfg = compose_experiment("ng2011_sparse_ae_mnist_smoke", mnist_path, *FAST[:2])
    m = train_and_evaluate(cfg, tmp_path)
    # measured: mean activation 0.062 (target 0.05) after 8 epochs on 2000 images
    assert abs(m["test/mean_code_activation"] - 0.05) < 0.03
    row = json.loads((tmp_path / "history.jsonl").read_text().splitlines()[-1])
    assert row["train/loss/kl_sparse"] > 0 and row["train/loss/weight_decay"] > 0


def test_makhzani_ksparse_smoke(mnist_path, tmp_path):
    cfg = compose_experiment("makhzani2013_ksparse_mnist_smoke", mnist_path, *FAST[:2])
    m = train_and_evaluate(cfg, tmp_path)
    # the code keeps k = 8 of 128 units; the probe's features keep alpha * k = 24
    assert m["test/code_nonzero_max"] <= 8
    assert m["probe/error_pct"] < 20.0
    for prefix in ("probe/", "probe/raw/", "probe/pca/"):  # l2 chosen on validation, each its own
        assert m[f"{prefix}l2"] == 1e-3  # l2 = 3 shrinks the weights to ~0: worse on validation
        assert 0 < m[f"{prefix}val/error_pct"] < 30.0
    from ae_jax.features import embed, load_run

    run = load_run(tmp_path)
    z = embed(run, np.zeros((2, 28, 28, 1), np.float32) + 0.5)
    assert (np.count_nonzero(z, axis=1) <= 24).all() and np.count_nonzero(z, axis=1).max() > 8
