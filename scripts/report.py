"""Report of a sweep: tables (Markdown, CSV, LaTeX) and figures of a Hydra multirun directory.

    python scripts/report.py multirun/<date>/<time>_sweep_latent
    python scripts/report.py multirun/<date>/<time>_sweep_noise --out docs/figures/noise \
        --metric test/mse test/denoise_mse

All the work happens in ``ae_jax.sweeps.report.write_report``; see docs/sweeps.md.
"""

import sys

from ae_jax.run_io import reader_left
from ae_jax.sweeps.report import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `... | head`: the reader has what it wanted; the files are written
        reader_left()
        sys.exit(141)
