"""Greedy layer-wise pretraining, unrolling, supervised fine-tuning and the pipeline's contract."""

from __future__ import annotations

import copy

import jax
import numpy as np
import pytest

from ae_jax.config import Config, ConfigError, validate
from ae_jax.data import Dataset, load_dataset
from ae_jax.pretraining.classifier import (
    EncoderClassifier,
    SupervisedError,
    init_classifier,
    train_classifier,
)
from ae_jax.pretraining.config import PretrainConfigError, validate_pretrain
from ae_jax.pretraining.layerwise import (
    UnrollError,
    encode_in_chunks,
    layer_config,
    pretrain_layers,
    unroll,
)
from ae_jax.pretraining.pipeline import chance_error_pct, pretrain_and_finetune
from ae_jax.training.trainer import Trainer


def small_config(mnist_path, **pretrain) -> Config:
    """A 784-32-16-8 sigmoid stack on 1000 MNIST images, one device, no figures."""
    cfg = Config()
    cfg.data.source, cfg.data.path, cfg.data.name = "idx", str(mnist_path), "mnist"
    cfg.data.max_train, cfg.data.max_test = 1000, 300
    m = cfg.model
    m.depth, m.widths, m.latent_dim = 2, [32, 16], 8
    m.activation, m.code_activation = "sigmoid", "sigmoid"
    cfg.loss.kind = "bce"
    cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.devices = 3, 50, 1
    cfg.trainer.figures, cfg.trainer.progress = False, False
    cfg.pretrain.enabled, cfg.pretrain.layer_epochs = True, 2
    cfg.pretrain.probe, cfg.pretrain.baseline = False, False
    for k, v in pretrain.items():
        setattr(cfg.pretrain, k, v)
    return validate(cfg)


@pytest.fixture(scope="module")
def mnist_small(mnist_path) -> Dataset:
    return load_dataset(small_config(mnist_path).data)


@pytest.fixture(scope="module")
def denoising_layers(mnist_path, mnist_small):
    cfg = small_config(mnist_path)
    cfg.noise.kind, cfg.noise.level = "masking", 0.25
    return cfg, pretrain_layers(validate(cfg), mnist_small, evaluate=False)


def _flat(x):
    return x.reshape(x.shape[0], -1)


def test_each_layer_is_a_denoising_ae_on_the_clean_codes_below(denoising_layers, mnist_small):
    cfg, layers = denoising_layers
    assert [layer.trainer.cfg.model.latent_dim for layer in layers] == [32, 16, 8]
    x = _flat(mnist_small.x_train)
    for below, layer in zip(layers, layers[1:], strict=False):
        # only the layer's own input is corrupted (inside its objective); its data are the
        # clean (uncorrupted) codes of the layer below
        assert layer.trainer.cfg.noise.kind == "masking" and layer.trainer.cfg.noise.level == 0.25
        clean = encode_in_chunks(below.trainer.objective.jitted.encode, below.params, x)
        np.testing.assert_array_equal(layer.trainer.data.x_train, clean)
        x = clean


def test_unrolled_deep_ae_reproduces_the_stack(denoising_layers, mnist_small, mnist_path):
    cfg, layers = denoising_layers
    deep_trainer = Trainer(copy.deepcopy(cfg), mnist_small)
    template = jax.device_get(deep_trainer.init_state().params)
    deep = unroll([layer.params for layer in layers], template, "pretrained")
    x = mnist_small.x_test[:64]
    # the deep encoder's code is the composition of the layer encoders
    h = _flat(x)
    for layer in layers:
        h = np.asarray(layer.trainer.objective.jitted.encode(layer.params, h))
    code = np.asarray(deep_trainer.objective.jitted.encode(deep, x))
    np.testing.assert_allclose(code, h, rtol=1e-5, atol=1e-6)
    # the deep decoder is the layer decoders in reverse order (all sigmoid: same activations)
    y = h
    for layer in reversed(layers):
        logits = layer.trainer.objective.model.apply({"params": layer.params}, y, method="decode")
        y = _flat(np.asarray(jax.nn.sigmoid(logits)))
    recon = np.asarray(deep_trainer.objective.jitted.forward(deep, x)[1])
    np.testing.assert_allclose(_flat(recon), y, rtol=1e-5, atol=1e-6)


def test_unroll_transposed_decoder_and_errors(denoising_layers, mnist_small):
    cfg, layers = denoising_layers
    template = jax.device_get(Trainer(cfg, mnist_small).init_state().params)
    deep = unroll([layer.params for layer in layers], template, "transposed")
    # decoder_0 (next to the code) inverts the top layer with W^T, decoder_2 the bottom layer
    np.testing.assert_array_equal(
        deep["decoder_0"]["kernel"], layers[2].params["encoder_0"]["kernel"].T
    )
    np.testing.assert_array_equal(
        deep["decoder_2"]["kernel"], layers[0].params["encoder_0"]["kernel"].T
    )
    np.testing.assert_array_equal(deep["decoder_2"]["bias"], layers[0].params["decoder_0"]["bias"])
    with pytest.raises(UnrollError, match="3 encoder layers but 2"):
        unroll([layer.params for layer in layers[:2]], template)
    with pytest.raises(UnrollError, match="shape"):
        unroll([layers[1].params, layers[0].params, layers[2].params], template)
    with pytest.raises(UnrollError, match="decoder_init='sideways'"):
        unroll([layer.params for layer in layers], template, "sideways")


def test_layer_config_units_and_losses(mnist_path):
    cfg = small_config(mnist_path)
    cfg.model.activation, cfg.model.code_activation = "relu", "linear"
    cfg.loss.kind = "bce"
    sizes = [32, 16, 8]
    first = layer_config(cfg, 0, sizes, input_in_unit_interval=True)
    middle = layer_config(cfg, 1, sizes, input_in_unit_interval=False)
    top = layer_config(cfg, 2, sizes, input_in_unit_interval=False)
    assert (first.model.depth, first.model.latent_dim, first.model.code_activation) == (
        0,
        32,
        "relu",
    )
    assert first.loss.kind == "bce"
    # relu codes are not in [0, 1]: the layer above reconstructs them with squared error
    assert (middle.loss.kind, middle.model.output_activation) == ("mse", "auto")
    assert (top.model.latent_dim, top.model.code_activation) == (8, "linear")
    assert first.trainer.epochs == cfg.pretrain.layer_epochs


def test_supervised_finetuning_error_far_below_chance(mnist_small):
    model = EncoderClassifier(sizes=(64,), num_classes=10)
    params = init_classifier(model, mnist_small.example_shape, seed=0)
    x, xt = _flat(mnist_small.x_train), _flat(mnist_small.x_test)
    _, history, metrics = train_classifier(
        model,
        params,
        x,
        mnist_small.y_train,
        xt,
        mnist_small.y_test,
        epochs=8,
        batch_size=50,
        lr=1e-2,
        devices=1,
    )
    assert metrics["test/error_pct"] < 25.0  # chance is 90%
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert metrics["compile/epoch_traces"] == 1


def test_supervised_data_parallel_matches_one_device(mnist_small):
    model = EncoderClassifier(sizes=(16,), num_classes=10)
    params = init_classifier(model, mnist_small.example_shape, seed=0)
    x, xt = _flat(mnist_small.x_train), _flat(mnist_small.x_test)
    args = (model, params, x, mnist_small.y_train, xt, mnist_small.y_test)
    one, _, m1 = train_classifier(*args, epochs=2, batch_size=40, lr=1e-3, devices=1)
    four, _, m4 = train_classifier(*args, epochs=2, batch_size=40, lr=1e-3, devices=4)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert m4["compile/epoch_traces"] == 1


def _on_file(cfg, path):
    """``cfg`` (a small pipeline config) reading all of the array file ``path`` instead."""
    cfg.data.source, cfg.data.path, cfg.data.max_train, cfg.data.max_test = (
        "array",
        str(path),
        None,
        None,
    )
    return cfg


def test_supervised_needs_labels(mnist_small, tmp_path, mnist_path):
    model = EncoderClassifier(sizes=(8,), num_classes=10)
    params = init_classifier(model, mnist_small.example_shape, seed=0)
    x = _flat(mnist_small.x_train)
    with pytest.raises(SupervisedError, match="needs class labels"):
        train_classifier(model, params, x, None, x, None, epochs=1, batch_size=50, lr=1e-3)
    # the pipeline refuses before any training starts
    unlabelled = tmp_path / "x.npy"
    np.save(unlabelled, np.random.default_rng(0).random((200, 12), dtype=np.float32))
    cfg = _on_file(small_config(mnist_path, supervised=True), unlabelled)
    with pytest.raises(SupervisedError, match="needs class labels"):
        pretrain_and_finetune(cfg, tmp_path / "run")
    with pytest.raises(SupervisedError, match="encoder_0.kernel has shape"):
        wrong = {"encoder_0": {"kernel": np.zeros((5, 8)), "bias": np.zeros(8)}}
        init_classifier(model, mnist_small.example_shape, seed=0, encoder=wrong)


@pytest.mark.parametrize(
    "labels, said",
    [
        (np.zeros(200), "training labels hold one class (0): there is nothing to classify"),
        (np.arange(200) // 2 + 25, "examples each: a measured quantity (a regression target)"),
    ],
)
def test_labels_that_are_no_classes_are_refused_before_any_stage(
    labels, said, tmp_path, mnist_path, caplog
):
    """A single class trained to a meaningless 0% error; the diabetes target (25..346, ~2
    examples a value) trained as 347 classes to 100% error, the warning blaming the rate."""
    import logging

    table = tmp_path / "xy.npz"
    x = np.random.default_rng(0).random((200, 12), dtype=np.float32)
    np.savez(table, x=x, y=labels.astype(np.int64))
    cfg = _on_file(small_config(mnist_path, supervised=True), table)
    import re

    with pytest.raises(SupervisedError, match=re.escape(said)):
        pretrain_and_finetune(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "layer_0").exists()  # nothing trained
    cfg.pretrain.supervised, cfg.pretrain.probe = False, True
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        metrics = pretrain_and_finetune(cfg, tmp_path / "probe")
    assert "no linear probe: " in caplog.text and "probe/error_pct" not in metrics


def test_a_supervised_batch_the_devices_cannot_share_is_refused_before_any_stage(
    mnist_path, tmp_path
):
    # it was refused only after every layer and the fine-tuning had trained, naming
    # trainer.batch_size where the user had set pretrain.supervised_batch_size
    cfg = small_config(mnist_path, supervised=True)
    cfg.trainer.devices, cfg.pretrain.supervised_batch_size = 2, 25
    with pytest.raises(ConfigError, match=r"pretrain.supervised_batch_size=25 does not split"):
        pretrain_and_finetune(cfg, tmp_path / "run")
    assert not list((tmp_path / "run").glob("**/checkpoints/*"))


def test_a_setting_a_higher_layer_cannot_take_is_refused_before_the_first_layer(
    mnist_path, tmp_path
):
    # model.sparse_k=20 fits the code (24) but not hidden layer 1 (16): layer 0 trained, then
    # the run stopped naming model.latent_dim=16, which the user had set to 24
    cfg = small_config(mnist_path)
    cfg.model.depth, cfg.model.widths, cfg.model.latent_dim = 2, [32, 16], 24
    cfg.model.sparse_k = 20
    said = r"^pretraining layer 1 \(32 -> 16 units\): model.sparse_k=20 is larger than the code "
    with pytest.raises(ConfigError, match=said + r"\(model.widths\[1\]=16\)"):
        pretrain_and_finetune(cfg, tmp_path / "run")
    assert not list((tmp_path / "run").glob("**/checkpoints/*"))
    # a hidden layer's units are model.activation, not model.code_activation
    cfg = small_config(mnist_path)
    cfg.model.activation, cfg.reg = "gelu", {"kl_sparse": {"strength": 0.1}}
    cfg = validate(cfg)
    with pytest.raises(ConfigError, match=r"model.activation='gelu'; set model.activation=sigm"):
        pretrain_and_finetune(cfg, tmp_path / "kl")
    # a rate that would diverge the last stage after every other trained
    bad = small_config(mnist_path, supervised=True)
    bad.pretrain.supervised_lr = float("inf")
    with pytest.raises(ConfigError, match=r"pretrain.supervised_lr=inf .* a finite number > 0"):
        validate_pretrain(bad)


def test_a_tied_model_is_pretrained_with_tied_layers_so_unrolling_keeps_them(mnist_path, tmp_path):
    # A tied deep model decodes with its encoder transposed: the untied layers' own decoder
    # kernels were dropped when unrolled (one layer: test mse 0.158 pretrained, 0.178 unrolled)
    cfg = small_config(mnist_path, unsupervised=False)
    cfg.model.depth, cfg.model.widths, cfg.model.tied = 0, None, True
    metrics = pretrain_and_finetune(validate(cfg), tmp_path)
    assert metrics["unrolled/test/mse"] == pytest.approx(metrics["pretrain/layer_0/test/mse"])


def test_a_baseline_with_nothing_to_compare_is_said_not_silently_dropped(
    mnist_path, tmp_path, caplog
):
    import logging

    cfg = small_config(mnist_path, unsupervised=False, baseline=True, layer_epochs=1)
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        metrics = pretrain_and_finetune(cfg, tmp_path)
    assert (
        "pretrain.baseline=true compares the fine-tuning stages with a random start, and "
        "none runs" in caplog.text
    )
    assert not any(k.startswith("baseline/") for k in metrics)


def test_validate_pretrain_refuses_bad_settings(mnist_path, tmp_path):
    cfg = small_config(mnist_path)
    bad = copy.deepcopy(cfg)
    bad.model.kind = "conv"
    with pytest.raises(PretrainConfigError, match="model.kind='conv'"):
        validate_pretrain(bad)
    bad = copy.deepcopy(cfg)
    bad.model.decoder_widths = [8, 32]
    with pytest.raises(PretrainConfigError, match="decoder_widths"):
        validate_pretrain(bad)
    bad = copy.deepcopy(cfg)
    bad.pretrain.decoder_init = "mirror"
    with pytest.raises(PretrainConfigError, match="decoder_init='mirror'.*pretrained, transposed"):
        validate_pretrain(bad)
    bad = copy.deepcopy(cfg)
    bad.pretrain.layer_epochs = 0
    with pytest.raises(PretrainConfigError, match="layer_epochs=0"):
        validate_pretrain(bad)
    # the pipeline reports it as a ConfigError (one line on the command line), before any data
    with pytest.raises(ConfigError, match="layer_epochs=0"):
        pretrain_and_finetune(bad, tmp_path)


def test_pipeline_pretraining_beats_random_start(mnist_path, tmp_path):
    """Same 784-32-16-8 network, same fine-tuning budget, with and without pretraining."""
    cfg = small_config(mnist_path, baseline=True, layer_epochs=3)
    cfg.model.code_activation = "linear"
    cfg.trainer.epochs = 4
    metrics = pretrain_and_finetune(cfg, tmp_path)
    for i in range(3):
        assert f"pretrain/layer_{i}/test/mse" in metrics
    # measured on this setup: per-image SSE 51.9 pretrained + fine-tuned, 69.2 from a random
    # start, 85.8 unrolled before fine-tuning
    assert metrics["test/sse_per_example"] < metrics["baseline/test/sse_per_example"]
    assert metrics["test/sse_per_example"] < metrics["unrolled/test/sse_per_example"]
    assert metrics["test/pca_sse_per_example"] == pytest.approx(784 * metrics["test/pca_mse"])
    # the baseline trains the fine-tuning's program: it compiled nothing (it reported the
    # fine-tuning's compile time as its own)
    assert (
        metrics["baseline/time/compile_seconds"] == 0.0 < metrics["finetune/time/compile_seconds"]
    )
    for name in (
        "metrics.json",
        "params.msgpack",
        "run.json",
        "history.jsonl",
        "pretrain/layer_0/history.jsonl",
        "pretrain/unrolled.msgpack",
        "baseline/history.jsonl",
    ):
        assert (tmp_path / name).is_file(), name


def test_a_stack_without_fine_tuning_still_draws_its_figures(mnist_path, tmp_path):
    # e.g. Makhzani's or Vincent's protocols: layers, then straight to a probe or supervision
    cfg = small_config(mnist_path, unsupervised=False)
    cfg.trainer.figures = True
    pretrain_and_finetune(cfg, tmp_path)
    drawn = {p.name for p in tmp_path.glob("*.png")}
    assert drawn == {"reconstructions.png", "code_activations.png", "filters.png"}  # no curves


@pytest.mark.parametrize(("layer_lr", "named"), [(1e6, "pretrain.layer_lr"), (None, "optim.lr")])
def test_a_diverging_layer_names_the_rate_it_trains_at(mnist_path, mnist_small, layer_lr, named):
    # The layers' one error line said "Lower optim.lr (now 1000000.0)", the layer's copy of
    # the rate, when the run's optim.lr was 0.001 and pretrain.layer_lr was the one to lower.
    from ae_jax.training.loop import TrainingDiverged

    cfg = small_config(mnist_path, layer_lr=layer_lr, layer_optim="sgd")
    cfg.model.output_activation = "linear"
    cfg.loss.kind = "mse"
    if layer_lr is None:
        cfg.optim.lr = 1e6
    with pytest.raises(TrainingDiverged, match=rf"Lower {named} \(now 1000000\.0\)"):
        pretrain_layers(validate(cfg), mnist_small, evaluate=False)


def test_chance_is_always_answering_the_most_frequent_label():
    # labels {3, 7} index eight outputs but are two classes: chance is 50%, not 87.5%
    assert chance_error_pct(np.array([3, 7] * 50)) == 50.0
    assert chance_error_pct(np.array([0] * 90 + [1] * 10)) == pytest.approx(10.0)
    assert chance_error_pct(np.arange(10).repeat(7)) == pytest.approx(90.0)


def test_a_classifier_left_at_chance_and_an_autoencoder_that_grew_are_said_to_be(
    mnist_path, mnist_small, tmp_path, caplog
):
    # Both completed as if fine: a supervised stage at 90% error (lr 1e3, its loss finite
    # but huge), and a run whose weights grew to a test MSE of 1e22 (clipped SGD at lr 1e3).
    import logging
    from types import SimpleNamespace

    from ae_jax.evaluation.metrics import warn_if_not_learned

    cfg = small_config(mnist_path, supervised=True, supervised_lr=1e3, supervised_epochs=2)
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        metrics = pretrain_and_finetune(cfg, tmp_path / "run")
    assert metrics["supervised/train/error_pct"] > 85
    assert "supervised: the classifier has not learned its training labels (train error" in (
        caplog.text
    )
    chance = chance_error_pct(mnist_small.y_train)  # the most frequent digit's share: 11%
    assert 87 < chance < 90
    assert (
        f"chance {chance:.0f}%: always the most frequent of 10 classes): "
        "pretrain.supervised_lr=1000 is too high"
    ) in caplog.text
    caplog.clear()
    x = np.random.default_rng(0).uniform(size=(100, 4)).astype(np.float32)
    trainer = SimpleNamespace(data=SimpleNamespace(x_train=x[:80], x_test=x[80:]))
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        warn_if_not_learned(cfg, trainer, {"test/mse": 0.05})  # learned, or nearly
        assert not caplog.text
        warn_if_not_learned(cfg, trainer, {"test/mse": 3.7e22}, who="runs/0")
    assert "runs/0: test MSE 3.7e+22 is " in caplog.text and "has not learned" in caplog.text
    # both causes named: a smoke run's 2 epochs a layer were blamed on the paper's rate
    assert "weights grow: optim.lr=0.001; or its 3 epochs were too few)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ae_jax"):  # worse than the mean, not 10x
        warn_if_not_learned(cfg, trainer, {"test/mse": 0.1})  # the mean's: 1/12
    assert "test MSE 0.1 is above the 0.08" in caplog.text
    assert "reconstructs worse than the mean does (its 3 epochs" in caplog.text


def test_a_supervised_batch_larger_than_the_data_is_said_once_for_both_stages(tmp_path, caplog):
    # the supervised stage and the baseline's each said it: the same line twice
    import logging

    from conftest import make_config

    cfg = make_config(
        "+pretrain=layerwise", "pretrain.layer_epochs=1", "trainer.epochs=1",
        "pretrain.probe=false", "pretrain.supervised=true", "pretrain.supervised_epochs=1",
        "pretrain.supervised_batch_size=100000",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        metrics = pretrain_and_finetune(cfg, tmp_path / "run")
    said = [r.getMessage() for r in caplog.records if "exceeds the 1437" in r.getMessage()]
    assert said == [
        "pretrain.supervised_batch_size=100000 exceeds the 1437 training examples of digits: "
        "every step takes the whole training split (batches of 1437)"
    ]
    assert "baseline/supervised/test/error_pct" in metrics
