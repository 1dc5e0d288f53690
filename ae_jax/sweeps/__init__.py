"""Sweeps: committed grids in ``conf/sweep/``, run as Hydra multiruns, and their reports.

``collect`` finds the runs of a multirun directory (also the jobs that never started) and the
swept axes; ``summary`` reduces them to mean +- std over seeds and writes the tables; ``plots``
draws a figure per axis and a reconstruction grid; ``report`` puts them together behind
``python scripts/report.py <multirun dir>``; ``vectorized`` trains the members of a sweep that
differ only in traced scalars as one vmapped program (``hydra/launcher=vmap``). See
docs/sweeps.md.
"""
