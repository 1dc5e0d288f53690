"""The training loop's contracts: one compilation, determinism, fail-fast on divergence."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_config, train

from ae_jax.data import load_dataset
from ae_jax.training.trainer import Trainer, TrainingDiverged

TIMING = ("time/", "train/samples_per_second")


def _without_timing(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith(TIMING)}


def test_epoch_program_compiles_once_per_run(tmp_path):
    m = train(
        tmp_path,
        "trainer.epochs=12",
        "noise=masking",
        "model.sparse_k=4",
        "model.sparse_k_start=8",
        "model.sparse_anneal_epochs=5",
    )
    assert m["compile/epoch_traces"] == 1


def test_k_sparse_annealing_that_cannot_take_effect_is_said(tmp_path, caplog):
    """An annealing longer than the run left k at 8 of the 3 the evaluation used, and one
    without a k to start from was ignored, both without a word."""
    import logging

    from ae_jax.config import ConfigError, validate

    k = ("model.sparse_k=3", "model.sparse_k_start=8", "trainer.epochs=2", "trainer.figures=false")
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        train(tmp_path, *k, "model.sparse_anneal_epochs=50")
    assert (
        "model.sparse_anneal_epochs=50 is longer than the 2 epochs this run trains: k ends "
        "at 8 (from model.sparse_k_start=8), not at model.sparse_k=3, which the evaluation "
        "and the features use; anneal over at most 2 epochs"
    ) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        train(tmp_path / "within", *k, "model.sparse_anneal_epochs=2")
    assert "sparse_anneal_epochs" not in caplog.text
    with pytest.raises(ConfigError, match=r"sparse_anneal_epochs=5 has no effect without model"):
        validate(make_config("model.sparse_k=3", "model.sparse_anneal_epochs=5"))
    with pytest.raises(ConfigError, match=r"sparse_anneal_epochs=5 needs model.sparse_k and"):
        validate(make_config("model.sparse_anneal_epochs=5"))


def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path):
    common = ("trainer.epochs=5", "noise=gaussian", "noise.level=0.2")
    a = train(tmp_path / "a", *common)
    b = train(tmp_path / "b", *common)
    c = train(tmp_path / "c", *common, "trainer.seed=1")
    assert _without_timing(a) == _without_timing(b)
    assert a["test/mse"] != c["test/mse"]


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"non-finite loss .* at epoch \d+, global step \d+"):
        train(
            tmp_path,
            "optim=sgd",
            "optim.lr=1e3",
            "model.output_activation=linear",
            "trainer.epochs=50",
        )
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_history_has_one_row_per_epoch_with_eval_points(tmp_path):
    train(tmp_path, "trainer.epochs=7", "trainer.eval_every=3")
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(rows) == 1 + 7
    header = rows[0].split(",")
    for key in ("epoch", "train/loss", "train/loss/rec", "train/l2_params", "eval/mse"):
        assert key in header
    assert "train/l2_grads" not in header  # per-step norms only with trainer.step_norms=true
    eval_col = header.index("eval/mse")
    filled = [i + 1 for i, r in enumerate(rows[1:]) if r.split(",")[eval_col]]
    assert filled == [3, 6, 7]


def test_data_stays_on_device_and_batches_are_a_permutation():
    """Every example is seen exactly once per epoch: the gathered batches are a permutation."""
    cfg = make_config("trainer.batch_size=64")
    data = load_dataset(cfg.data)
    trainer = Trainer(cfg, data)
    n, b = data.x_train.shape[0], cfg.trainer.batch_size
    steps = n // b
    order = jax.random.permutation(jax.random.fold_in(trainer.init_state().data_key, 0), n)
    used = np.asarray(order[: steps * b])
    assert len(set(used.tolist())) == steps * b
    assert trainer.steps_per_epoch == steps


def test_step_matches_a_hand_written_adam_step():
    """One step of the per-device function equals loss -> grad -> optax.adam by hand."""
    import optax

    cfg = make_config("trainer.batch_size=32", "optim.lr=0.01")
    data = load_dataset(cfg.data)
    trainer = Trainer(cfg, data)
    state = trainer.init_state()
    x = jnp.asarray(data.x_train[:32])
    from ae_jax.training.step import make_train_step

    step = jax.jit(make_train_step(trainer.objective, trainer.tx, None))
    new, metrics = step(state, x, trainer.hparams())

    def loss(p):
        recon = jax.nn.sigmoid(trainer.model.apply({"params": p}, x)[0])
        return jnp.mean((recon - x) ** 2)

    value, grads = jax.value_and_grad(loss)(state.params)
    ref = optax.adam(0.01)
    updates, _ = ref.update(grads, ref.init(state.params), state.params)
    expected = optax.apply_updates(state.params, updates)
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-6)
    for a, e in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected)):
        # Adam divides by |g|: float32 round-off in tiny gradients moves updates by ~1e-6
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_step_norms_are_per_step_and_leave_training_unchanged():
    """trainer.step_norms=true adds the three per-step norms; the trained parameters and the
    losses are the same either way, and l2_params of the epoch's last step is the epoch's."""
    runs = {}
    for flag in ("false", "true"):
        cfg = make_config("trainer.epochs=1", f"trainer.step_norms={flag}")
        trainer = Trainer(cfg, load_dataset(cfg.data))
        state = trainer.parallel.place(trainer.init_state())
        x = trainer.parallel.place(jnp.asarray(trainer.data.x_train))
        hparams = trainer.parallel.place(trainer.hparams())
        program = trainer.compile(state, x, hparams)
        runs[flag] = jax.device_get(program(state, x, jnp.int32(0), hparams))
    (s0, m0), (s1, m1) = runs["false"], runs["true"]
    assert "l2_grads" not in m0 and m1["l2_grads"].shape == m1["loss"].shape
    np.testing.assert_array_equal(m0["loss"], m1["loss"])
    for a, b in zip(jax.tree.leaves(s0.params), jax.tree.leaves(s1.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(m0["l2_params"], m1["l2_params"][-1], rtol=1e-6)


def test_cpu_compiler_options_drop_parameter_copies_and_change_no_value():
    """The epoch program compiled with CPU_COMPILER_OPTIONS has no per-step copies of the
    parameters it updates in place, and computes bitwise what XLA's default compile does."""
    import re

    from ae_jax.training.parallel import CPU_COMPILER_OPTIONS

    cfg = make_config("trainer.epochs=1", "model.widths=[48,32]")
    trainer = Trainer(cfg, load_dataset(cfg.data))
    place = trainer.parallel.place
    x, hparams = place(jnp.asarray(trainer.data.x_train)), place(trainer.hparams())
    lowered = jax.jit(trainer.epoch_fn, donate_argnums=0).lower(
        place(trainer.init_state()), x, jnp.int32(0), hparams
    )
    kernel_shapes = {f"f32[{a},{b}]" for a, b in ((64, 48), (48, 32), (32, 48), (48, 64))}
    results = {}
    for name, options in (("default", {}), ("ours", CPU_COMPILER_OPTIONS)):
        program = lowered.compile(compiler_options=options)
        copies = re.findall(r"= (f32\[\d+,\d+\])\{[^}]*\} copy\(", program.as_text())
        state, metrics = program(place(trainer.init_state()), x, jnp.int32(0), hparams)
        results[name] = ({c for c in copies if c in kernel_shapes}, (state.params, metrics))
    assert results["default"][0], "XLA's default compile no longer copies parameters: recheck"
    assert not results["ours"][0]
    default, ours = (jax.tree.leaves(jax.device_get(results[k][1])) for k in ("default", "ours"))
    for a, b in zip(default, ours, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("model=conv", "noise=gaussian"),
        ("model=linear",),
        ("model=shallow", "model.latent_dim=96", "model.tied=true"),
        ("model.activation=sigmoid", "model.sparse_k=4", "optim.name=sgd"),
    ],
)
def test_initialisers_compiled_at_o1_give_bitwise_the_values_of_xlas_default(overrides):
    """The initialisers run once per seed and are compiled with INIT_CPU_OPTIONS (LLVM -O1,
    40-60% less compile time); the parameters, optimiser state and keys they make must be
    bitwise those of XLA's default -O3 compile, or every run would start elsewhere."""
    from ae_jax.pretraining.classifier import EncoderClassifier, init_classifier
    from ae_jax.training.state import INIT_CPU_OPTIONS, _init_fn

    assert jax.default_backend() == "cpu" and INIT_CPU_OPTIONS
    cfg = make_config(*overrides)
    trainer = Trainer(cfg, load_dataset(cfg.data))
    init = _init_fn(trainer.model, trainer.tx, tuple(trainer.data.example_shape))
    for seed in (0, 7):
        ours = _raw(init(np.int32(seed)))
        default = _raw(jax.jit(init.__wrapped__)(np.int32(seed)))
        for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(ours), strict=True):
            np.testing.assert_array_equal(a, b)
    # Traced inside another program (where JAX refuses compiler options) it still works.
    shapes = jax.eval_shape(trainer.init_state)
    assert jax.tree.structure(shapes) == jax.tree.structure(trainer.init_state(abstract=True))
    if cfg.model.kind == "mlp":  # the supervised stage's classifier
        model = EncoderClassifier(sizes=(32, 16), num_classes=10, activation="sigmoid")
        ours = init_classifier(model, trainer.data.example_shape, seed=3)
        x0 = jnp.zeros((1, *trainer.data.example_shape), jnp.float32)
        default = jax.jit(model.init)(jax.random.key(3), x0)["params"]
        for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(ours), strict=True):
            np.testing.assert_array_equal(a, b)


def _raw(tree):
    """``tree`` with its typed random keys as their raw uint32 data (comparable arrays)."""
    prng = jax.dtypes.prng_key
    return jax.tree.map(
        lambda a: jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, prng) else a, tree
    )


@pytest.mark.parametrize(
    "stage, warned",
    [
        (("pretrain.supervised=true", "pretrain.unsupervised=false"), False),
        (("pretrain.unsupervised=true", "pretrain.finetune_keep_objective=true"), False),
        (("pretrain.unsupervised=true",), True),
    ],
)
def test_a_pipeline_warns_of_an_unregularised_wide_code_only_where_one_is_trained(
    tmp_path, caplog, stage, warned
):
    # An overcomplete contractive layer (64 -> 100), then fine-tuning. The supervised stage's
    # deep-AE config drops the regulariser, which once drew a "reg=none ... identity" warning
    # on every such pipeline (the rifai2011 CAE's included): only unsupervised fine-tuning
    # without the layers' objective trains the code unregularised, and the line says why.
    import logging

    overrides = (
        "+pretrain=layerwise",
        "model=shallow",
        "model.latent_dim=100",
        "reg=contractive",
        "trainer.epochs=1",
        "pretrain.baseline=false",
        "pretrain.probe=false",
        "pretrain.layer_epochs=1",
        "pretrain.supervised_epochs=1",
        *stage,
    )
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        m = train(tmp_path, *overrides)
    assert m  # it ran to the end
    if warned:
        assert "model.latent_dim=100 > input dimension 64 with reg=none" in caplog.text
        assert "in unsupervised fine-tuning" in caplog.text
        assert "pretrain.finetune_keep_objective=true fine-tunes with the layers" in caplog.text
    else:
        assert "overcomplete" not in caplog.text


def test_overcomplete_warning_only_for_the_runs_own_code(caplog):
    import logging

    from ae_jax.config import DataConfig
    from ae_jax.data import load_dataset
    from ae_jax.training.trainer import validate_against_data

    cfg = make_config("model=shallow", "model.latent_dim=100")  # 64 inputs, no regulariser
    data = load_dataset(DataConfig())
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        validate_against_data(cfg, data, is_code=False)  # a hidden layer of a stack
    assert "overcomplete" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        validate_against_data(cfg, data)
    assert "model.latent_dim=100 > input dimension 64" in caplog.text
    caplog.clear()
    for noise in (["noise=masking", "noise.level=0.25"], ["noise=gaussian", "noise.level=0.1"]):
        with caplog.at_level(logging.WARNING, logger="ae_jax"):  # a denoising AE cannot copy
            validate_against_data(
                make_config("model=shallow", "model.latent_dim=100", *noise), data
            )
    assert "overcomplete" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="ae_jax"):  # level 0 is no noise: it can copy
        validate_against_data(
            make_config("model=shallow", "model.latent_dim=100", "noise=masking", "noise.level=0"),
            data,
        )
    assert "and no input noise" in caplog.text


def test_min_steps_on_a_small_split_makes_passes_that_equal_plain_epochs(tmp_path):
    """trainer.min_steps on a small training split: trainer.epochs stay the epochs, each makes
    several passes in one program, and epoch e of P passes is bitwise the plain epochs P*e,
    ..., P*e + P - 1 (pass p folds in e * P + p)."""
    from ae_jax.training.step import make_train_epoch

    cfg = make_config("model=linear", "model.latent_dim=4", "trainer.epochs=5")
    cfg.trainer.min_steps = 5 * 22 * 3  # digits: 22 steps of 64 per pass, so 3 passes
    trainer = Trainer(cfg, load_dataset(cfg.data))
    assert (trainer.epochs, trainer.passes, trainer.steps_per_epoch) == (5, 3, 66)
    x, hparams = jnp.asarray(trainer.data.x_train), trainer.hparams()
    plain = jax.jit(
        make_train_epoch(
            trainer.objective,
            trainer.tx,
            num_examples=x.shape[0],
            batch_size=64,
            num_devices=1,
            axis_name=None,
        )
    )
    passes = jax.jit(trainer.epoch_fn)
    state = trainer.init_state()
    a, ma = passes(state, x, jnp.int32(1), hparams)  # epoch 1: plain epochs 3, 4, 5
    b, losses = state, []
    for e in (3, 4, 5):
        b, mb = plain(b, x, jnp.int32(e), hparams)
        losses.append(mb["loss"])
    np.testing.assert_array_equal(ma["loss"], np.concatenate(losses))
    assert int(a.step) == int(b.step) == 66
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(u, v)

    # a run: one history row per epoch, at least min_steps steps, one program
    m = train(tmp_path, "model=linear", "model.latent_dim=4", "trainer.min_steps=20000")
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(rows) == 1 + 300  # trainer.epochs of trainer=converge
    assert m["compile/epoch_traces"] == 1
    assert m["test/subspace_angle_max_deg"] < 2.0


def test_progress_lines_read_at_a_glance():
    """An eta of 336843730001s was printed as such; a supervised stage's validation error
    read `eval error_pct 88.889` beside `error_pct 90.77%`."""
    from ae_jax.training.loop import Stage, duration, progress_line

    cases = {0.04: "0s", 12.34: "12s", 245: "4m 05s", 11_520: "3h 12m", 266_400: "3d 2h"}
    assert {s: duration(s) for s in cases} == cases
    assert duration(12.34, 1) == "12.3s" and duration(float("nan")) == "?"
    stage = Stage(
        name="supervised", epochs=10**13, run_epoch=None, steps_per_epoch=10, batch_size=50
    )
    row = {"epoch": 1, "train/loss": 2.0, "train/error_pct": 90.77, "val/error_pct": 88.8889}
    line = progress_line(stage, row, elapsed=1.5, start_epoch=0)
    assert "error_pct 90.77% | val error_pct 88.89% | " in line
    assert line.endswith("1.5s elapsed, eta 173,611,111d 2h"), line
    # a diverging run's loss was printed in all its 28 digits, a linear AE's at PCA's
    # optimum as 0.00000
    row = {"epoch": 2, "train/loss": 2.6966872e27, "train/loss/rec": 2.6966872e27}
    row["train/loss/l1"] = 1.234e-7
    line = progress_line(stage, row, elapsed=1.5, start_epoch=0)
    assert "| loss 2.697e+27 (rec 2.697e+27 + l1 1.234e-07) |" in line, line
    from ae_jax.training.loop import loss_text

    assert [loss_text(v) for v in (0.0436123, 0.0, 12345.6, float("nan"))] == [
        "0.04361", "0.00000", "12345.60000", "nan"
    ]  # fmt: skip


def test_a_groups_progress_names_its_members_by_their_jobs():
    """`member losses failed 0.1944 failed 0.2067` listed the members in the program's order
    (jobs 0, 2, 1, 3), unnamed."""
    from ae_jax.training.loop import Stage, _member_losses

    def stage(names):
        return Stage(
            name="", epochs=3, run_epoch=None, steps_per_epoch=1, batch_size=1, member_names=names
        )

    jobs = ["/s/0", "/s/2", "/s/1", "/s/3"]
    history = [[{"train/loss": v}] for v in (0.5, 0.25, 0.125, 1.0)]
    said = _member_losses(stage(jobs), history, failed={1})
    assert said == "losses 0 0.5000, 1 0.1250, 2 failed, 3 1.0000"
    many = [f"/s/{j}" for j in range(12)]
    history = [[{"train/loss": 0.1 * (j + 1)}] for j in range(12)]
    said = _member_losses(stage(many), history, failed={3, 7})
    assert said == "losses 0.1000 (0) to 1.2000 (11), median 0.6500; 2 failed (3, 7)"


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        ((), "Lower optim.lr (now 0.001), or set optim.grad_clip; then run it in a new"),
        (("reg=l1", "optim.grad_clip=1"), "Lower optim.lr (now 0.001) or the regularisation"),
        (
            ("noise=gaussian", "noise.level=1e30", "reg=l1"),
            "Lower optim.lr (now 0.001), the regularisation strengths, noise.level (now 1e+30)",
        ),
    ],
)
def test_the_divergence_hint_names_what_this_run_can_change(overrides, said):
    # It advised optim.grad_clip when it was set already, never named a huge noise level, and
    # sent the user back to the same directory, where the changed config is refused.
    from ae_jax.config import validate
    from ae_jax.training.trainer import divergence_hint

    hint = divergence_hint(validate(make_config(*overrides)))
    assert hint.startswith(said) and hint.endswith("(or with trainer.resume=false)"), hint
    assert ("grad_clip" in hint) == ("optim.grad_clip=1" not in overrides)


def test_an_epoch_of_huge_finite_losses_has_a_finite_mean():
    """Every step's loss near float32's largest value (reg.contractive.strength=1e38) is
    finite, so training goes on; the epoch's mean overflowed to inf in float32, and the run's
    metrics.json then held the string "inf" for a completed run."""
    from ae_jax.training.loop import _mean_row

    losses = np.full(22, 3.0e38, np.float32)
    row = _mean_row(4, {"loss": losses, "loss/rec": losses / 1e38})
    assert row["epoch"] == 5 and math.isfinite(row["train/loss"])
    assert row["train/loss"] == pytest.approx(3.0e38, rel=1e-6)
