"""The ``pretrain`` config group: greedy layer-wise pretraining and fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PretrainConfig:
    enabled: bool = False  # train each layer as a shallow autoencoder first, then unroll
