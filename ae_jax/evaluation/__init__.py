"""Evaluation of trained autoencoders: the PCA baseline, principal angles, a linear probe, figures.

from ae_jax.evaluation import fit_pca, pca_mse, principal_angles_deg, linear_probe
from ae_jax.evaluation import plot_reconstructions, plot_training_curves, plot_code_histogram
"""

from ae_jax.evaluation.pca import PCA, PCAError, fit_pca, pca_mse, principal_angles_deg
from ae_jax.evaluation.probe import ProbeError, linear_probe

# The figures need matplotlib (half a second to import): loaded on first use, so that a run
# with trainer.figures=false, and a vmap sweep without figures, never pay it.
_FIGURES = (
    "FigureError",
    "code_histogram_figure",
    "plot_code_histogram",
    "plot_reconstructions",
    "plot_training_curves",
    "reconstructions_figure",
    "training_curves_figure",
)


def __getattr__(name: str):
    if name in _FIGURES:
        from ae_jax.evaluation import figures

        return getattr(figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PCA",
    "FigureError",
    "PCAError",
    "ProbeError",
    "code_histogram_figure",
    "fit_pca",
    "linear_probe",
    "pca_mse",
    "plot_code_histogram",
    "plot_reconstructions",
    "plot_training_curves",
    "principal_angles_deg",
    "reconstructions_figure",
    "training_curves_figure",
]
