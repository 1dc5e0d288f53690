"""Greedy layer-wise pretraining of stacked autoencoders, unrolling, and fine-tuning."""
