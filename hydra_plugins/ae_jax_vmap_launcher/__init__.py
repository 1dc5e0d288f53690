"""Hydra launcher ``hydra/launcher=vmap``: a multirun's compatible jobs as one vmapped program."""
