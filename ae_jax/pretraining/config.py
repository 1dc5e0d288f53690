"""The ``pretrain`` config group (kept importable here; it now lives in ``ae_jax.config``).

With ``pretrain.enabled`` the run's deep MLP (``model.widths`` then ``model.latent_dim``) is
built layer by layer: layer i is a shallow autoencoder of the run's own variant (``noise``,
``reg``, ``loss``) trained on the clean codes of layer i-1 (Bengio et al. 2007; Vincent et al.
2010, sec. 3.5), then the layers are unrolled into the deep autoencoder (Hinton & Salakhutdinov
2006) and fine-tuned without supervision (``unsupervised``: the deep AE on reconstruction, with
the run's ``optim`` and ``trainer``) and/or with supervision (``supervised``: the encoder plus a
softmax layer on the labels). ``baseline`` trains the same network from a random start with the
same stages, which is the comparison that says what pretraining bought.

``PretrainConfig``, ``PretrainConfigError`` (a ``ConfigError``) and ``validate_pretrain`` are
defined in ``ae_jax.config`` (which imports nothing from this package) and re-exported here.
"""

from ae_jax.config import (
    DECODER_INITS,
    PretrainConfig,
    PretrainConfigError,
    supervised_schedules,
    validate_pretrain,
)

__all__ = [
    "DECODER_INITS",
    "PretrainConfig",
    "PretrainConfigError",
    "supervised_schedules",
    "validate_pretrain",
]
