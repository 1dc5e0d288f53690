"""Shared test setup: eight fake CPU devices for the data-parallel paths, and the MNIST location."""

import os

# Must happen before JAX initialises its backend (i.e. before any test imports jax).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# .ci/run sets this; a developer checkout finds the shared copy beside the repository.
os.environ.setdefault("AE_JAX_MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist"))
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def mnist_dir() -> Path:
    """The directory of the official MNIST files, or a test failure in CI / skip elsewhere."""
    d = Path(os.environ.get("AE_JAX_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))
    missing = [f for f in MNIST_FILES if not (d / f).exists()]
    if missing:
        msg = f"MNIST files {missing} not found in {d} (set AE_JAX_MNIST_DIR)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    return mnist_dir()


def make_config(*overrides: str, base: str | None = None):
    """The real default config (as Hydra composes it from conf/) with dotted overrides applied,
    shrunk for tests: no figures, one device unless the test asks for more."""
    from hydra import compose, initialize_config_dir

    from ae_jax.config import register_configs, to_config

    register_configs()
    defaults = ["trainer.figures=false", "trainer.devices=1", "trainer.progress=false"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name=base or "config", overrides=[*defaults, *overrides])
    return to_config(cfg)


def train(tmp_path, *overrides: str) -> dict:
    """Train and evaluate the default config with ``overrides`` in a fresh directory."""
    from ae_jax.train import train_and_evaluate

    workdir = tmp_path / "run"
    return train_and_evaluate(make_config(*overrides), workdir)


@pytest.fixture(scope="module")
def hydra_conf():
    """Hydra initialised on conf/ for compose() in a test module; cleared before and after."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ae_jax.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf"), job_name="t"):
        yield
    GlobalHydra.instance().clear()
