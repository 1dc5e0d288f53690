"""Train one autoencoder from the Hydra config in ``conf/`` (kept short on purpose).

    python experiments/train.py                                  # deep AE on digits
    python experiments/train.py model.latent_dim=16 reg=contractive reg.contractive.strength=0.1
    python experiments/train.py model=shallow 'reg=[kl_sparse,weight_decay]' reg.kl_sparse.target=.1
    python experiments/train.py --multirun noise.level=0,0.1,0.25,0.4

All the work happens in ``ae_jax.train.train_and_evaluate``; outputs go to Hydra's run directory.
"""

import signal
import sys

# Ctrl-C while the libraries load: nothing is written yet, so leave quietly (exit status 130)
# instead of with the import's traceback; Python's own handler is back once they are loaded.
signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ae_jax.cli import (  # noqa: E402
    check_output_dirs,
    check_search_or_exit,
    drop_import_log_handler,
    enable_compilation_cache,
    exit_fast,
    hold_run_log,
    job_score,
    quiet_console,
    run_or_exit,
    summarize_stopped_multirun,
    warn_grid_without_multirun,
)
from ae_jax.config import ConfigError, check_overrides, register_configs  # noqa: E402
from ae_jax.run_io import reader_left  # noqa: E402
from ae_jax.train import train_and_evaluate  # noqa: E402
from ae_jax.training.loop import preempt_requested as stop_signal_received  # noqa: E402
from ae_jax.training.loop import stop_signal  # noqa: E402

signal.signal(signal.SIGINT, signal.default_int_handler)
drop_import_log_handler()
register_configs()
enable_compilation_cache()  # a later run of the same shapes loads its programs, not compiles


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    quiet_console()
    hold_run_log()  # train.log gets this job's lines once its directory is known to be its own
    hydra_cfg = HydraConfig.get()
    # In a multirun a bad job must fail alone: Hydra records it and runs the others.
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    check_search_or_exit(cfg, hydra_cfg)  # an Optuna search must not choose on the test split
    warn_grid_without_multirun(hydra_cfg, multirun)  # +sweep=... without --multirun
    metrics = run_or_exit(
        train_and_evaluate, cfg, hydra_cfg.runtime.output_dir, exit_on_error=not multirun
    )
    # what the sweeper gets: metrics[score] (NaN if failed)
    return job_score(cfg, metrics, workdir=hydra_cfg.runtime.output_dir)


if __name__ == "__main__":
    try:  # a misspelt key, a wrong value type, an unknown option: one line, before Hydra composes
        check_overrides(sys.argv[1:], conf_dir=str(Path(__file__).resolve().parent.parent / "conf"))
    except ConfigError as err:
        print(f"ConfigError: {err}", file=sys.stderr)
        sys.exit(2)
    check_output_dirs(sys.argv[1:])
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C outside a run (a run records it and exits 130 itself)
        summarize_stopped_multirun("Ctrl-C")
        print("Ctrl-C: stopped", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `--help | head`: the reader has what it wanted
        reader_left()
        sys.exit(141)  # a shell's status for a writer ended by SIGPIPE
    except SystemExit:  # a job stopped by a signal ends the multirun: say where it is
        if stop_signal_received():
            summarize_stopped_multirun(stop_signal())
        raise
    exit_fast()  # the work is written: skip the interpreter's teardown (~0.6 s)
