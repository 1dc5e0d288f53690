"""Run the papers' reproductions in the background, resumably, and publish their numbers.

    mkdir -p runs
    nohup python scripts/reproduce.py pca_equivalence hinton2006_mnist > runs/reproduce.log 2>&1 &
    python scripts/reproduce.py --list                 # what there is, and what is published
    python scripts/reproduce.py --publish-only         # rebuild results/ from runs/

Each reproduction is one documented command of ``experiments/train.py`` (the ones RESULTS.md
quotes) run into a fixed directory ``runs/<name>/`` with its console in ``runs/<name>.log``.
Running the same line again after an interruption (a killed process, the end of a session)
resumes every run from its checkpoints: finished stages are not trained again. ``kill <pid>``
(SIGTERM), SIGHUP or Ctrl-C of this script reaches its training command, which checkpoints the
epoch in flight and stops; the script waits for it, and nothing further runs. A reproduction
runs in one process at a time (``runs/.<name>.lock``): a second instance is refused, naming the
first's pid.

When a run has finished with the config its command composes now, its ``metrics.json``,
``config.yaml``, histories and figures (never its parameters or checkpoints) are copied to
``results/<experiment>/``. A finished run of another config (the experiment was changed after
it ran, so its command refused the directory) is named on the console and not published:
results/ keeps what it had. ``results/summary.json`` is then rebuilt from every published
experiment: a list of ``{"experiment", "metric", "ours", "paper"}`` where ``metric`` is a key
of that experiment's ``metrics.json``. The papers' numbers and protocols are in docs/references.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs"
RESULTS = REPO / "results"
# what a published experiment keeps: the numbers, the config, the curves and the figures
KEEP = ("metrics.json", "config.yaml", "history.csv", "*.png", "*/history.csv", "*/*/history.csv")


@dataclass
class Reproduction:
    """One command and what it publishes: ``runs`` maps a run directory (relative to
    ``runs/<name>/``, "" for a single run) to the experiment name under ``results/``;
    ``summary`` lists (experiment, metric, the paper's number or None) rows."""

    args: list[str]
    runs: dict[str, str]
    summary: list[tuple[str, str, float | None]] = field(default_factory=list)
    multirun: bool = False
    # model selection: experiment -> (metric to minimise, the run directories it chooses among);
    # the chosen run is published under the experiment's name with selection.json beside it
    select: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    then: list[str] = field(default_factory=list)  # commands (args) run after the first one
    # a sweep's report (scripts/report.py) once every run has finished: (experiment, metrics,
    # the papers' numbers as report.py --reference arguments: metric, KEY=X, value, label)
    report: tuple[str, list[str], list[tuple[str, str, str, str]]] | None = None


# Makhzani & Frey's rows (k, test error %): recalled, unverified (docs/references.md#makhzani2013)
KSPARSE = ((25, 1.35), (40, 1.54), (10, 2.10))
# the rows' layer epochs and annealing epochs for k = 40 and 10 (k = 25: the config's 20 and 10)
LAYER_EPOCHS = {40: (5, 2), 10: (50, 25)}
LAMBDAS = ("1e-4", "3e-4", "1e-3", "3e-3")  # the CAE's strengths, chosen among on validation

REPRODUCTIONS: dict[str, Reproduction] = {
    "pca_equivalence": Reproduction(
        ["+experiment=pca_equivalence"],
        {f"k{k}": f"pca_equivalence_k{k}" for k in (10, 30, 50)},
        [
            row
            for k in (10, 30, 50)
            for row in (
                (f"pca_equivalence_k{k}", "test/mse_over_pca", 1.0),
                (f"pca_equivalence_k{k}", "test/subspace_angle_max_deg", 0.0),
            )
        ],
        multirun=True,
    ),
    "hinton2006_mnist": Reproduction(
        ["+experiment=hinton2006_mnist"],
        {"": "hinton2006_mnist"},
        [
            ("hinton2006_mnist", "test/sse_per_example", 3.00),
            ("hinton2006_mnist", "test/pca_sse_per_example", 13.87),
            ("hinton2006_mnist", "baseline/test/sse_per_example", None),
        ],
    ),
    "hinton2006_mnist_modern": Reproduction(
        ["+experiment=hinton2006_mnist_modern"],
        {"": "hinton2006_mnist_modern"},
        [("hinton2006_mnist_modern", "test/sse_per_example", 2.65)],
    ),
    "vincent2010_sdae_mnist": Reproduction(
        ["+experiment=vincent2010_sdae_mnist"],
        {"": "vincent2010_sdae3_mnist"},
        [
            ("vincent2010_sdae3_mnist", "supervised/test/error_pct", 1.28),
            ("vincent2010_sdae3_mnist", "baseline/supervised/test/error_pct", None),
        ],
    ),
    "rifai2011": Reproduction(
        ["+experiment=rifai2011_cae_mnist", f"reg.contractive.strength={','.join(LAMBDAS)}"],
        {"ae_wd": "rifai2011_ae_wd_mnist", "ae": "rifai2011_ae_mnist"},
        [
            ("rifai2011_cae_mnist", "supervised/test/error_pct", 1.14),
            ("rifai2011_ae_wd_mnist", "supervised/test/error_pct", 1.68),
            ("rifai2011_ae_mnist", "supervised/test/error_pct", 1.78),
            ("rifai2011_cae_mnist", "pretrain/layer_0/test/jacobian_fro", None),
            ("rifai2011_ae_mnist", "pretrain/layer_0/test/jacobian_fro", None),
        ],
        multirun=True,
        select={
            "rifai2011_cae_mnist": (
                "supervised/val/error_pct",
                [f"lambda{float(v)}" for v in LAMBDAS],
            )
        },
        then=[
            ["+experiment=rifai2011_ae_wd_mnist", "hydra.run.dir={dir}/ae_wd"],
            ["+experiment=rifai2011_ae_mnist", "hydra.run.dir={dir}/ae"],
        ],
    ),
    "makhzani2013": Reproduction(
        ["+experiment=makhzani2013_ksparse_mnist", "hydra.run.dir={dir}/k25"],
        {f"k{k}": f"makhzani2013_ksparse_mnist_k{k}" for k in (25, 40, 10)},
        [(f"makhzani2013_ksparse_mnist_k{k}", "probe/error_pct", e) for k, e in KSPARSE],
        then=[
            [
                "+experiment=makhzani2013_ksparse_mnist",
                f"model.sparse_k={k}",
                f"model.sparse_k_features={3 * k}",
                # chosen per row on the probe's validation error (the config comment)
                f"pretrain.layer_epochs={LAYER_EPOCHS[k][0]}",
                f"model.sparse_anneal_epochs={LAYER_EPOCHS[k][1]}",
                f"hydra.run.dir={{dir}}/k{k}",
            ]
            for k in (40, 10)
        ],
    ),
    "vincent2010_ablation": Reproduction(
        ["+experiment=vincent2010_masking_ablation"],
        {},
        multirun=True,
        report=(
            "vincent2010_sdae3_masking_ablation",
            ["supervised/test/error_pct", "supervised/val/error_pct"],
            [
                ("supervised/test/error_pct", "noise.level=0", "1.40", "SAE-3, paper"),
                ("supervised/test/error_pct", "noise.level=0.25", "1.28", "SdA-3, paper"),
            ],
        ),
    ),
    "ng2011_sparse_ae_mnist": Reproduction(
        ["+experiment=ng2011_sparse_ae_mnist"],
        {"": "ng2011_sparse_ae_mnist"},
        [("ng2011_sparse_ae_mnist", "test/mean_code_activation", 0.05)],
    ),
}


def run_dir(name: str) -> Path:
    return RUNS / name


def commands(name: str) -> list[list[str]]:
    r = REPRODUCTIONS[name]
    where = "hydra.sweep.dir" if r.multirun else "hydra.run.dir"
    train = [sys.executable, str(REPO / "experiments" / "train.py")]
    first = [*train, *(["--multirun"] if r.multirun else [])]
    first += [a.format(dir=run_dir(name)) for a in r.args]
    if not any(a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in r.args):
        first.append(f"{where}={run_dir(name)}")
    return [first] + [[*train, *(a.format(dir=run_dir(name)) for a in args)] for args in r.then]


def finished(path: Path) -> bool:
    try:
        return json.loads((path / "status.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def command_args(r: Reproduction, sub: str) -> list[str]:
    """The arguments of the command of ``r`` that writes run directory ``sub``."""
    for args in r.then:
        if any(a.startswith("hydra.run.dir=") and a.endswith(f"/{sub}") for a in args):
            return args
    return r.args


def _hydra() -> None:
    """Hydra initialised on conf/ for ``compose``, unless it already is."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ae_jax.config import register_configs

    if GlobalHydra.instance().is_initialized():
        return
    register_configs()
    initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3", job_name="publish")


def composed_config(r: Reproduction, sub: str, stored: dict) -> dict:
    """The config that the command of ``r`` writing ``sub`` composes now (as the run stores
    it, ``config_dict``). A sweep's member takes its swept values (the command's comma lists,
    the experiment's ``hydra.sweeper.params``) from ``stored``, its own config."""
    from hydra import compose

    from ae_jax.config import config_dict, to_config
    from ae_jax.sweeps.collect import flatten

    _hydra()
    flat = flatten(stored)
    overrides = []
    for arg in command_args(r, sub):
        key, _, value = arg.partition("=")
        if key.startswith("hydra."):
            continue
        if r.multirun and "," in value:  # a swept value: the member's own
            value = json.dumps(flat.get(key.lstrip("+")))
        overrides.append(f"{key}={value}")
    if r.multirun:
        sweep = compose("config", overrides=overrides, return_hydra_config=True).hydra.sweeper
        overrides += [f"{k}={json.dumps(flat.get(k))}" for k in sweep.params or {}]
    return config_dict(to_config(compose("config", overrides=overrides)))


def differences(name: str, sub: str, stored: dict) -> list[str]:
    """How ``stored``, the config of a run of ``runs/<name>/<sub>``, differs from what its
    command composes now (``key: stored -> command's``; [] when it is the command's run).
    The run directory's own rule (``config_differences``, less the keys neither run reads),
    except that the number of epochs must match too and the data path is the machine's."""
    from ae_jax.config import Config, config_dict
    from ae_jax.training.rundir import config_differences, read_differences

    try:
        now = composed_config(REPRODUCTIONS[name], sub, stored)
    except Exception as err:  # a config no longer composed (a removed option or key)
        return [f"its command does not compose a config for it now ({err})".splitlines()[0]]
    now.setdefault("data", {})["path"] = stored.get("data", {}).get("path")
    # a setting neither run reads (a supervised stage's rate, without one) changes neither
    diff = read_differences(stored, now, config_differences(stored, now, config_dict(Config())))
    epochs = (stored.get("trainer", {}).get("epochs"), now["trainer"]["epochs"])
    if epochs[0] != epochs[1] and not any(d.startswith("trainer.epochs:") for d in diff):
        diff.append(f"trainer.epochs: {epochs[0]!r} -> {epochs[1]!r}")
    return diff


def stale(name: str, sub: str) -> list[str]:
    """``differences`` for the run in ``runs/<name>/<sub>``."""
    import yaml

    path = run_dir(name) / sub / "config.yaml"
    try:
        stored = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        return [f"{path} cannot be read ({err})".splitlines()[0]]
    return differences(name, sub, stored)


def current(name: str, sub: str, skipped: list[str]) -> bool:
    """Whether ``runs/<name>/<sub>`` has finished as its command's run now; when it finished
    with another config, why not goes to ``skipped``."""
    path = run_dir(name) / sub
    if not finished(path):
        return False
    diff = stale(name, sub)
    if diff:
        skipped.append(
            f"{path} finished with another config than its command's now ({'; '.join(diff[:3])}"
            f"{'; ...' if len(diff) > 3 else ''}): not published; remove it and run "
            f"`python scripts/reproduce.py {name}`"
        )
    return not diff


class PublishError(OSError):
    """An experiment's files could not be written to results/; its published files there are
    as they were."""


@contextlib.contextmanager
def staged(experiment: str):
    """A fresh ``results/.<experiment>.partial`` to write into; on success it replaces
    ``results/<experiment>`` in two renames, on failure it is removed and what was published
    stays whole (a ``PublishError`` naming the experiment and the reason)."""
    target = RESULTS / experiment
    staging, old = RESULTS / f".{experiment}.partial", RESULTS / f".{experiment}.old"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        yield staging
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not target.exists():
            old.rename(target)
        where = f"{err.filename}: " if err.filename else ""
        raise PublishError(
            f"cannot publish {experiment} to {RESULTS} ({where}{err.strerror or err}); "
            f"{target} is as it was"
        ) from None
    shutil.rmtree(old, ignore_errors=True)


def publish_error(err: OSError) -> str:
    """One line for a failure to publish (``PublishError`` says it already)."""
    if isinstance(err, PublishError):
        return str(err)
    where = f"{err.filename}: " if err.filename else ""
    return f"cannot write to {RESULTS} ({where}{err.strerror or err})"


def publish_one(source: Path, experiment: str, extra: dict[str, str] | None = None) -> list[str]:
    """Copy a finished run's files (``KEEP``), and ``extra`` files (name -> text), to
    results/<experiment>/, all at once."""
    with staged(experiment) as staging:
        for pattern in KEEP:
            for f in source.glob(pattern):
                if f.is_file():
                    dest = staging / f.relative_to(source)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dest)
        for name, text in (extra or {}).items():
            (staging / name).write_text(text)
    return [experiment]


def publish(name: str, skipped: list[str] | None = None) -> list[str]:
    """Copy every finished run of ``name`` that is its command's run now (``current``) to
    results/; returns the experiments published. Finished runs of another config (an
    experiment changed since, and its command refused their directory) are named in
    ``skipped`` and left where they are: results/ keeps what it had."""
    skipped = [] if skipped is None else skipped
    r = REPRODUCTIONS[name]
    done = []
    for sub, experiment in r.runs.items():
        if current(name, sub, skipped):
            done += publish_one(run_dir(name) / sub, experiment)
    if r.report is not None:
        experiment, metrics, references = r.report
        runs = [p.parent for p in run_dir(name).glob("*/status.json")]
        ok = [current(name, p.name, skipped) for p in runs]  # every one checked and named
        if runs and all(ok):
            from ae_jax.sweeps.plots import Reference
            from ae_jax.sweeps.report import write_report

            refs = tuple(Reference.parse(*ref) for ref in references)
            with staged(experiment) as staging:
                write_report(run_dir(name), staging, metrics=metrics, references=refs)
            done.append(experiment)
    for experiment, (metric, candidates) in r.select.items():
        scored = []
        for sub in candidates:
            path = run_dir(name) / sub
            if current(name, sub, skipped):
                metrics = json.loads((path / "metrics.json").read_text())
                scored.append((metrics[metric], sub, metrics))
        if len(scored) < len(candidates):
            continue  # chosen only once every candidate has finished, with the command's config
        best = min(scored, key=lambda s: s[0])[1]
        r.runs[best] = experiment
        table = [
            {"run": sub, metric: value, "test": {k: v for k, v in m.items() if "/test/" in k}}
            for value, sub, m in scored
        ]
        selection = {"metric": metric, "chosen": best, "candidates": table}
        done += publish_one(
            run_dir(name) / best,
            experiment,
            extra={"selection.json": json.dumps(selection, indent=2) + "\n"},
        )
    return done


def write_summary() -> Path:
    rows = []
    for r in REPRODUCTIONS.values():
        for experiment, metric, paper in r.summary:
            path = RESULTS / experiment / "metrics.json"
            if not path.exists():
                continue
            metrics = json.loads(path.read_text())
            if metric in metrics:
                rows.append(
                    {
                        "experiment": experiment,
                        "metric": metric,
                        "ours": metrics[metric],
                        "paper": paper,
                    }
                )
    out = RESULTS / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from ae_jax.run_io import write_text_atomic

    write_text_atomic(out, json.dumps(rows, indent=2) + "\n")
    return out


class Stopped(Exception):
    """SIGTERM, SIGHUP or Ctrl-C reached this script: its training command was stopped (and
    saved its checkpoints); nothing further runs."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code  # the script's exit status: 143 (SIGTERM, SIGHUP) or 130 (Ctrl-C)


def _ends_with_this_script(cmd: list[str]) -> list[str]:
    """``cmd`` (a Python command), made to receive SIGTERM if this script dies without passing
    one on (``kill -9``): on Linux it asks the kernel for a parent-death signal
    (``prctl(PR_SET_PDEATHSIG)``) and then becomes ``cmd`` (``os.execv`` keeps it). A command
    left running alone held the run directory, and the rerun was refused naming its pid.
    Elsewhere, ``cmd`` as it is."""
    if not sys.platform.startswith("linux"):
        return cmd
    code = (
        "import ctypes, os, signal, sys; "
        "ctypes.CDLL(None).prctl(1, signal.SIGTERM); "  # PR_SET_PDEATHSIG
        f"os.getppid() == {os.getpid()} or sys.exit(143); "  # the script died before it
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code, *cmd]


def run_command(cmd: list[str], out) -> int:
    """Run one training command; a SIGTERM or SIGHUP sent to this script is passed on to it
    (it saves its checkpoints and exits, resumable) and then raises ``Stopped``, so that
    stopping the script never leaves a training process running on its own. Ctrl-C reaches
    the command directly (it is in this script's process group): the script waits for it to
    save and stop, then raises ``Stopped`` too."""
    child = subprocess.Popen(
        _ends_with_this_script(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=REPO
    )
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        child.send_signal(signal.SIGTERM)

    def note(signum, _frame):  # the command has it too: a second signal would cut its save
        received.append(signum)

    stops = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {s: signal.signal(s, note if s == signal.SIGINT else forward) for s in stops}
    try:
        rc = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        first = signal.Signals(received[0])
        said = "Ctrl-C" if first == signal.SIGINT else first.name
        code = 130 if first == signal.SIGINT else 143
        raise Stopped(f"{said}: stopped {cmd[1]} (exit {rc})", code)
    return rc


def errors_in(log: Path, start: int, most: int = 3) -> list[str]:
    """The error lines (``[ERROR] - ...``, one per failed run) that ``log`` gained after byte
    ``start``: the last ``most`` of them, without their timestamps."""
    with log.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    lines = [ln.split("][ERROR] - ", 1)[1] for ln in text.splitlines() if "][ERROR] - " in ln]
    return lines[-most:]


def reproduce(name: str) -> int:
    from ae_jax.training.rundir import RunDirError, hold_lock

    log = RUNS / f"{name}.log"
    try:  # held until this process ends, however it ends
        RUNS.mkdir(exist_ok=True)
        hold_lock(
            RUNS / f".{name}.lock",
            f"reproduction {name!r}",
            f"wait for it to finish (its console is {log}), or stop it (kill <pid>: its runs "
            "save their checkpoints, and the same command resumes them)",
        )
        out = log.open("a")
    except RunDirError as err:
        print(f"error: {err}", flush=True)
        return 2
    except OSError as err:  # runs/ unwritable, or a file of that name: nothing has started
        where = err.filename or RUNS
        print(
            f"error: {where}: {err.strerror or err}; this script keeps its runs, logs and locks "
            f"in {RUNS}, which must be a writable directory",
            flush=True,
        )
        return 2
    started = time.time()
    rc = 0
    with out:
        for cmd in commands(name):
            stamp = time.strftime("%H:%M:%S")
            print(f"[{stamp}] {name}: {' '.join(cmd[1:])} (log {log})", flush=True)
            start = out.tell()
            try:
                code = run_command(cmd, out)
                rc = code or rc
                if code:  # why, on the console too (the whole story is in the log)
                    lines = errors_in(log, start)
                    for line in lines:
                        print(f"    {line}", flush=True)
                    if any("holds a run with another config" in line for line in lines):
                        # its ways out (hydra.run.dir, trainer.resume) are not this script's
                        print(
                            f"    the experiment changed since {run_dir(name)} ran; this "
                            f"script always runs there: move it aside (mv {run_dir(name)} "
                            f"{run_dir(name)}.old) to run it anew, or restore the config",
                            flush=True,
                        )
            except Stopped as stop:
                print(
                    f"[{time.strftime('%H:%M:%S')}] {name}: {stop}; run the same command "
                    "again to resume",
                    flush=True,
                )
                return stop.code
    skipped: list[str] = []
    try:
        published = publish(name, skipped)
        write_summary()
    except OSError as err:  # a full disk, an unwritable results/: what was published stays
        print(f"error: {publish_error(err)}", flush=True)
        return 2
    for line in skipped:
        print(f"    {line}", flush=True)
    print(
        f"[{time.strftime('%H:%M:%S')}] {name}: exit {rc} after {time.time() - started:.0f}s; "
        f"published {', '.join(published) or 'nothing'}",
        flush=True,
    )
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names",
        nargs="*",
        help=f"of: {', '.join(REPRODUCTIONS)}; none: every one, one after another (hours on a "
        "CPU; each resumable)",
    )
    parser.add_argument("--list", action="store_true", help="list the reproductions")
    parser.add_argument("--publish-only", action="store_true", help="only rebuild results/")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in REPRODUCTIONS]
    if unknown:
        print(f"unknown reproduction {unknown[0]!r}; choose from: {', '.join(REPRODUCTIONS)}")
        return 2
    if args.list:
        for name in REPRODUCTIONS:
            r = REPRODUCTIONS[name]
            state = [
                f"{e}: {'published' if (RESULTS / e).exists() else '-'}"
                for e in [*r.runs.values(), *r.select, *([r.report[0]] if r.report else [])]
            ]
            print(f"{name:28s} {'; '.join(state)}")
        return 0
    if args.publish_only:
        skipped: list[str] = []
        published: dict[str, list[str]] = {}
        try:
            for name in args.names or REPRODUCTIONS:
                published[name] = publish(name, skipped)
            summary = write_summary()
        except OSError as err:
            print(f"error: {publish_error(err)}")
            return 2
        for line in skipped:
            print(line)
        for name, experiments in published.items():  # nothing to publish is said, not silent
            said = ", ".join(experiments) or f"nothing (no finished run of it in {run_dir(name)})"
            print(f"{name}: published {said}")
        print(f"wrote {summary}")
        return 0
    if "AE_JAX_MNIST_DIR" not in os.environ:
        default = REPO.parent / "shared" / "data" / "mnist"
        if not default.exists():
            print("set AE_JAX_MNIST_DIR to the directory of the four MNIST .gz files")
            return 2
        os.environ["AE_JAX_MNIST_DIR"] = str(default)
    mnist = Path(os.environ["AE_JAX_MNIST_DIR"])
    if not mnist.is_dir():  # every reproduction trains on MNIST: refused before any starts
        print(
            f"AE_JAX_MNIST_DIR={mnist} is not a directory; set it to the directory of the four "
            "MNIST files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
            "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])"
        )
        return 2
    rc = 0
    for name in args.names or REPRODUCTIONS:
        rc = reproduce(name) or rc
        if rc in (130, 143):  # stopped: the later reproductions do not start
            break
    return rc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C between training commands (publishing, starting)
        print("Ctrl-C: stopped; run the same command again to resume", flush=True)
        sys.exit(130)
    except BrokenPipeError:  # `... | head`: the reader left; the runs resume where they stopped
        from ae_jax.run_io import reader_left

        reader_left()
        sys.exit(141)
