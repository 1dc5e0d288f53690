"""The data package: every source (digits, IDX, TFDS, arrays) loaded as one scaled `Dataset`.

from ae_jax.data import load_dataset
ds = load_dataset(cfg.data)  # Dataset(name='digits', train=1437, test=360, ...)
"""

from ae_jax.data.dataset import DataError, Dataset
from ae_jax.data.sources import load_dataset

__all__ = ["DataError", "Dataset", "load_dataset"]
