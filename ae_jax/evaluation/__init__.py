"""Evaluation of trained autoencoders: the PCA baseline, principal angles, a linear probe, figures.

from ae_jax.evaluation import fit_pca, pca_mse, principal_angles_deg, linear_probe
from ae_jax.evaluation import plot_reconstructions, plot_training_curves, plot_code_histogram
"""

# Every name is loaded on first use: the PCA and the probe need JAX, the figures matplotlib
# (half a second to import), so that a run with trainer.figures=false never imports matplotlib,
# and a process that only draws figures (draw_many_runs_figures' workers) never imports JAX.
_MODULES = {
    "PCA": "pca",
    "PCAError": "pca",
    "fit_pca": "pca",
    "pca_mse": "pca",
    "principal_angles_deg": "pca",
    "ProbeError": "probe",
    "linear_probe": "probe",
    "FigureError": "figures",
    "code_histogram_figure": "figures",
    "plot_code_histogram": "figures",
    "plot_reconstructions": "figures",
    "plot_training_curves": "figures",
    "reconstructions_figure": "figures",
    "training_curves_figure": "figures",
}


def __getattr__(name: str):
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(f"ae_jax.evaluation.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_MODULES)
