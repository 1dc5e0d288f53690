"""The vectorised sweep engine: runs that differ only in traced scalars train as ONE program.

Members of a sweep that share every shape-determining setting and differ only in the noise
level, the regularisation strength, the learning rate or the seed are stacked along a leading
axis and trained by ``jax.vmap`` of the same per-device epoch that single runs use: one
compilation, one dispatch per epoch for all members, bigger matrix multiplies; members of one
seed compute their random draws (data order, noise) once between them (``shared_draws``). Each
member then gets exactly the outputs a single run writes (metrics.json, history,
reconstructions, params, figures), so reports cannot tell the two engines apart, and its
metrics equal its sequential run's to float round-off (tests/test_vectorized.py).

Select it for a Hydra multirun with ``hydra/launcher=vmap`` (see ``hydra_plugins/``), or call
``train_vectorized(configs, workdirs)`` from Python.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ae_jax.config import Config, ConfigError, to_yaml, validate
from ae_jax.data import load_dataset
from ae_jax.features import write_run_info
from ae_jax.loggers import LoggerError
from ae_jax.models.builder import build_model
from ae_jax.run_io import member_lines, write_history
from ae_jax.training.checkpoint import Checkpointer
from ae_jax.training.loop import Stage, checkpoint_schedule, run_stage, sigterm_flag
from ae_jax.training.objective import make_hparams
from ae_jax.training.parallel import compiler_options
from ae_jax.training.rundir import claimed, completed_run
from ae_jax.training.state import TrainState
from ae_jax.training.step import DATA_AXIS, make_train_epoch
from ae_jax.training.trainer import (
    Trainer,
    divergence_hint,
    validate_against_data,
    warn_if_anneal_unfinished,
)

log = logging.getLogger("ae_jax")

# The settings a member may vary without changing the compiled program (see HParams).
VECTORIZABLE = (
    "noise.level",
    "noise.eval_level",
    "reg.<term>.strength",
    "optim.lr",
    "trainer.seed",
    "name",
    "logger",  # each member opens its own trackers, at their own image periods
)


def _blanked(cfg: Config) -> Config:
    """``cfg`` with every vectorisable setting (``VECTORIZABLE``) blanked."""
    return dataclasses.replace(
        cfg,
        noise=dataclasses.replace(cfg.noise, level=0.0, eval_level=None),
        reg={k: dataclasses.replace(t, strength=0.0) for k, t in cfg.reg.items()},
        optim=dataclasses.replace(cfg.optim, lr=1.0),
        trainer=dataclasses.replace(cfg.trainer, seed=0),
        name="",
        logger={},
    )


def _member_values(cfg: Config) -> tuple:
    """The values ``_blanked`` blanks: what tells one member of a group from another."""
    return (
        cfg.noise.level,
        cfg.noise.eval_level,
        tuple(sorted((k, t.strength) for k, t in cfg.reg.items())),
        cfg.optim.lr,
        cfg.trainer.seed,
    )


def static_part(cfg: Config) -> str:
    """The config with every vectorisable scalar blanked: equal strings share one program."""
    return to_yaml(_blanked(cfg))


def group_by_program(configs: list[Config]) -> list[list[int]]:
    """Indices of ``configs`` grouped so that each group can run as one vectorised program."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(static_part(cfg), []).append(i)
    return list(groups.values())


def grouping_settings(configs: list[Config]) -> list[str]:
    """The settings (dotted keys) that keep ``configs`` out of one program: those, other than
    ``VECTORIZABLE``, whose values differ between them."""
    from ae_jax.loggers import flatten_config

    flat = [flatten_config(dataclasses.asdict(_blanked(c))) for c in configs]
    keys = sorted(set().union(*flat))
    return [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def _stack(trees):
    """Stack a list of equal pytrees along a new leading (member) axis, on the host.

    No program runs: ``jnp.stack`` of a state compiled one (0.9 s cold for the default model)
    and then resharding it onto the mesh compiled a slicing program per leaf (0.7 s);
    ``_spread`` places the host arrays on the devices directly. PRNG key leaves are stacked
    through their raw key data."""

    def stack(*xs):
        if jax.dtypes.issubdtype(xs[0].dtype, jax.dtypes.prng_key):
            data = np.stack([np.asarray(jax.random.key_data(x)) for x in xs])
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(xs[0]))
        return np.stack([np.asarray(x) for x in xs])

    return jax.tree.map(stack, *trees)


def _abstract_stack(tree, members: int, mesh: Mesh | None):
    """The abstract value (shape, dtype, placement) of ``members`` stacked copies of ``tree``
    as ``_spread(_stack(...))`` places them: what the epoch program compiles for."""
    sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec("members"))
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((members, *x.shape), x.dtype, sharding=sharding), tree
    )


def _member(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def host_cores_as_devices(members: int) -> int:
    """On a host without accelerators, one XLA CPU device per core (at most one per member),
    so that the members of a group train on every core at once: XLA runs each device's program
    on its own thread, while the small matrix multiplies of one program barely use a second
    core. Must run before JAX starts its backends; a device count the user set (``XLA_FLAGS``'
    ``--xla_force_host_platform_device_count``, ``jax_num_cpu_devices``) is kept. Returns the
    number of CPU devices JAX will have (1: unchanged). Accelerators are unaffected (their
    devices are the local devices either way)."""
    if (
        members < 2
        or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
        or jax.config.jax_num_cpu_devices > 0
    ):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = min(cores or 1, members)
    if count < 2:
        return 1
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX has already started (e.g. an earlier batch of this sweep)
        return 1
    return count


class MemberRefused(Exception):
    """One member of a group cannot begin (its tracker cannot be opened; ``error``, a
    LoggerError), found before anything is compiled or written: the caller fails that member
    and trains the others without it. ``index``: its place in the caller's ``configs``."""

    def __init__(self, index: int, error: Exception):
        super().__init__(f"member {index}: {type(error).__name__}: {error}")
        self.index, self.error = index, error


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a group's members run: a ``members`` mesh axis (each device holds
    ``count // members`` whole members) and, when devices outnumber what the members can fill,
    a ``data`` axis over which each member's batch is split (gradients averaged over it, as in
    a data-parallel single run). ``mesh`` is None on one device."""

    count: int  # the group's members
    members: int  # devices along the members axis
    data: int  # devices along the data axis
    available: int  # local devices (capped by trainer.devices)
    mesh: Mesh | None

    def record(self) -> dict:
        """``run.json``'s record of where the group's members trained."""
        devices = [jax.local_devices()[0]] if self.mesh is None else list(self.mesh.devices.flat)
        return {
            "count": len(devices),
            "platform": devices[0].platform,
            "parallel": "vmap",
            "members": self.count,
            "mesh": {"members": self.members, "data": self.data},
        }

    def describe(self) -> str:
        if self.mesh is None:
            return " on 1 device"
        used = self.members * self.data
        of = f" of {self.available}" if used < self.available else ""
        noun = "member" if self.count == 1 else "members"
        line = f", {self.count} {noun} over {used}{of} devices"
        if self.data == 1:
            return line + f", {self.count // self.members} per device"
        return line + (
            f": {self.members} x {self.data} (members x data), "
            f"{self.count // self.members} per device group, each member's batch split over "
            f"{self.data} devices"
        )


def group_layout(members: int, requested: int | None, batch_size: int) -> Layout:
    """The mesh for ``members`` on the local devices (``trainer.devices`` caps them; None:
    all): as many devices along the members axis as evenly divide the members, then as many
    along a data axis as the rest allow and evenly divide the batch."""
    devices = jax.local_devices()
    if requested is not None:
        if requested > len(devices):  # a cap here, where a single run refuses it: said
            log.warning(
                "trainer.devices=%d is more than the %d %s device(s) here: the group uses %d",
                requested,
                len(devices),
                devices[0].platform,
                len(devices),
            )
        devices = devices[:requested]
    m = max(k for k in range(1, len(devices) + 1) if members % k == 0)
    d = max(k for k in range(1, len(devices) // m + 1) if batch_size % k == 0)
    if m * d == 1:
        mesh = None
    elif d == 1:
        mesh = Mesh(np.array(devices[:m]), ("members",))
    else:
        mesh = Mesh(np.array(devices[: m * d]).reshape(m, d), ("members", DATA_AXIS))
    return Layout(members, m, d, len(devices), mesh)


def _spread(tree, mesh: Mesh | None, replicated: bool = False):
    """Place a tree on the mesh: split along the leading (members) axis, or replicated (over
    the data axis too, if the mesh has one)."""
    if mesh is None:
        return jax.device_put(tree)
    spec = PartitionSpec() if replicated else PartitionSpec("members")
    return jax.device_put(tree, NamedSharding(mesh, spec))


def shared_draws(seeds: list[int], blocks: int) -> int:
    """How many consecutive members share one stream of random draws: the members sit in
    ``blocks`` equal blocks (one per device along the members axis); within a block, members
    of equal seed in a row draw the same data orders, example keys and noise bits (every key of
    a state derives from its seed alone). The answer is the largest run length that tiles
    every block into runs of one seed (1: every member draws its own)."""
    size = len(seeds) // blocks
    runs = 0
    for b in range(blocks):
        block = seeds[b * size : (b + 1) * size]
        start = 0
        for i in range(1, size + 1):
            if i == size or block[i] != block[start]:
                runs = math.gcd(runs, i - start)
                start = i
    return max(runs, 1)


# The state's leaves that a run of members of one seed hold in common: the step counter (all
# members step together) and the two keys. The inner vmap of _members_vmap leaves them
# unbatched, so everything drawn from them (the data order, the example keys, the noise
# bits, the gathered batch) is computed once per run and broadcast to its members.
_SHARED = TrainState(step=None, params=0, opt_state=0, key=None, data_key=None, running=0)


def _map_state(state: TrainState, shared, each) -> TrainState:
    """``shared`` applied to the ``_SHARED`` leaves of ``state``, ``each`` to every other leaf."""
    return TrainState(
        step=shared(state.step),
        params=jax.tree.map(each, state.params),
        opt_state=jax.tree.map(each, state.opt_state),
        key=shared(state.key),
        data_key=shared(state.data_key),
        running=jax.tree.map(each, state.running),
    )


def _members_vmap(epoch_fn, runs: int):
    """``epoch_fn`` (one member) vmapped over a leading members axis of the state and the
    hyperparameters. With ``runs`` > 1, consecutive runs of that many members share their
    random draws (``shared_draws``): the members are folded into (n / runs, runs), the inner
    vmap over a run keeps the ``_SHARED`` leaves unbatched, the outer one maps the runs.
    Every member computes what it would alone; XLA only stops computing one run's draws
    ``runs`` times (a sweep of noise levels on 2 seeds: ~12% of its epoch, PERFORMANCE.md)."""
    if runs == 1:
        return jax.vmap(epoch_fn, in_axes=(0, None, None, 0))
    inner = jax.vmap(epoch_fn, in_axes=(_SHARED, None, None, 0), out_axes=(_SHARED, 0))
    outer = jax.vmap(inner, in_axes=(0, None, None, 0))

    def epoch(state: TrainState, data, epoch, hparams):
        n = state.step.shape[0]

        def fold(x):
            return x.reshape(n // runs, runs, *x.shape[1:])

        def unfold(x):
            return x.reshape(n, *x.shape[2:])

        def first(x):  # (n,) -> (n / runs,): equal within each run by construction
            return fold(x)[:, 0]

        def spread(x):  # (n / runs,) -> (n,)
            return jnp.broadcast_to(x[:, None], (n // runs, runs, *x.shape[1:])).reshape(
                n, *x.shape[1:]
            )

        out, metrics = outer(
            _map_state(state, first, fold), data, epoch, jax.tree.map(fold, hparams)
        )
        return _map_state(out, spread, unfold), jax.tree.map(unfold, metrics)

    return epoch


def _group_epoch(trainer: Trainer, layout: Layout, runs: int = 1):
    """The members' epoch: the single-device epoch vmapped over the members, or, with a data
    axis, the data-parallel per-device epoch vmapped over a device's members under
    ``shard_map`` (its collectives run over ``data``; members never communicate). ``runs``
    consecutive members share their random draws (``shared_draws``)."""
    if layout.data == 1:
        return _members_vmap(trainer.epoch_fn, runs)
    t = trainer.cfg.trainer
    per_device = make_train_epoch(
        trainer.objective,
        trainer.tx,
        num_examples=trainer.data.x_train.shape[0],
        batch_size=t.batch_size,
        num_devices=layout.data,
        axis_name=DATA_AXIS,
        step_norms=t.step_norms,
        passes=trainer.passes,
    )
    members = PartitionSpec("members")
    return jax.shard_map(
        _members_vmap(per_device, runs),
        mesh=layout.mesh,
        in_specs=(members, PartitionSpec(), PartitionSpec(), members),
        out_specs=members,
        check_vma=False,  # replicated over data by construction (pmean'd gradients)
    )


def _resumable_part(program: str) -> str:
    """``program`` (a ``static_part``) without the settings a resumed run may change
    (``ae_jax.training.rundir.MAY_DIFFER``: devices, logging, checkpoint cadence, ...): a
    group rerun with another ``trainer.devices`` or ``trainer.log_every`` resumes its
    checkpoint, as a single run does, instead of training again from epoch 1 beside it."""
    import yaml

    from ae_jax.training.rundir import MAY_DIFFER

    tree = yaml.safe_load(program)
    for key in MAY_DIFFER:
        node, _, leaf = key.partition(".")
        if not leaf:
            tree.pop(node, None)
        elif isinstance(tree.get(node), dict):
            tree[node].pop(leaf, None)
    return yaml.safe_dump(tree, sort_keys=True)


def group_checkpoint_dir(configs: list[Config], workdirs: list[Path]) -> Path:
    """Where a group checkpoints: beside its members, keyed by the program and the members
    (``<common parent>/.vmap-groups/<key>/checkpoints``), so the same sweep finds it again."""
    parent = Path(os.path.commonpath([str(Path(w).absolute()) for w in workdirs]))
    if len(workdirs) == 1:
        parent = parent.parent
    # trainer.epochs is left out: more epochs extend a finished group, as they extend a
    # single run (where they may not, the members' directories refuse the new config)
    base = configs[0]
    program = _resumable_part(
        static_part(dataclasses.replace(base, trainer=dataclasses.replace(base.trainer, epochs=0)))
    )

    # each member's directory (relative to the group's, so that a sweep directory moved or
    # copied elsewhere finds its groups) and its own values of what the group vectorises, so
    # that a sweep run again with other values never resumes the earlier members' states
    def key(where) -> Path:
        members = "|".join(f"{where(w)}:{_member_values(c)!r}" for c, w in zip(configs, workdirs))
        digest = hashlib.sha256((program + members).encode()).hexdigest()[:12]
        return parent / ".vmap-groups" / digest / "checkpoints"

    found = key(lambda w: Path(w).absolute().relative_to(parent))
    legacy = key(lambda w: Path(w).absolute())  # keyed by absolute paths until 2026-12-07
    return legacy if not found.exists() and legacy.exists() else found


def finished_members(configs: list[Config], workdirs: list[Path]) -> dict[int, dict]:
    """Members whose directory already holds this very run, completed, when the group they
    form has no checkpoint of its own: index -> that run's metrics. A sweep run again with
    values added or removed forms other groups than before, keyed elsewhere
    (``group_checkpoint_dir``): their finished members are not trained again, as a finished
    single run is not. A group that has a checkpoint resumes (or re-evaluates) all its members
    as before; ``trainer.resume=false`` trains every member."""
    ckpt = group_checkpoint_dir(configs, workdirs)
    if ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir()):
        return {}
    done = {}
    for i, (cfg, workdir) in enumerate(zip(configs, workdirs)):
        if cfg.trainer.resume and (metrics := completed_run(cfg, Path(workdir))) is not None:
            done[i] = metrics
    return done


def load_group_data(configs: list[Config], rundirs: list | None = None, data=None):
    """The dataset a group of ``group_by_program`` trains on (``data`` when an earlier group
    of the same data setting loaded it), checked against the group's model (the checks a
    ``Trainer`` makes: value range, image size against the kernel, layers against the
    halvings) and against each member's earlier run (``rundirs``, claimed).
    ``hydra/launcher=vmap`` calls it for every group before any group trains, so that a group
    the data refuses costs the sweep no training; raises ConfigError, DataError or
    RunDirError."""
    base = configs[0]
    if data is None:
        data = load_dataset(base.data)
    for rundir in rundirs or []:
        rundir.check_data(data, base.data)
    validate_against_data(base, data, is_code=False)  # is_code: its warning comes once, later
    build_model(base.model, data.example_shape)
    return data


def train_group(
    configs: list[Config],
    workdirs: list[Path],
    hydra_files: list[dict] | None = None,
    rundirs: list | None = None,
    data=None,
) -> list[dict[str, float]]:
    """Train configs that share one program (see ``group_by_program``) as one vmapped program
    through the one loop: a stage whose state has a leading members axis, checkpointed for all
    members together and resumed the same way (``group_checkpoint_dir``). A member whose loss
    turns non-finite is marked failed (its status, a console line naming it, the epoch and the
    step) and the others finish. Each member's outputs go to its workdir; returns each
    member's metrics ({} for a failed one). ``rundirs``: the members' directories already
    claimed by the caller (``claimed``; the caller releases them), so that a directory holding
    another run refuses its own member before the group is formed; otherwise they are claimed
    here, and one such directory refuses the group. ``data``: the group's dataset from
    ``load_group_data`` (with those ``rundirs``); loaded and checked here when not given."""
    from ae_jax.outputs import (
        describe,
        epoch_logger,
        eval_level,
        evaluate_and_write,
        finish_outputs,
        open_run_loggers,
        reconstruction_snapshots,
        warm_outputs_in_background,
    )
    from ae_jax.run_io import write_json_atomic

    # Members of one seed side by side (stable), so that they share their random draws
    # (shared_draws); each member's results go back to its place in the caller's order.
    order = sorted(range(len(configs)), key=lambda i: configs[i].trainer.seed)
    if order != list(range(len(configs))):
        try:
            ordered = train_group(
                [configs[i] for i in order],
                [workdirs[i] for i in order],
                None if hydra_files is None else [hydra_files[i] for i in order],
                None if rundirs is None else [rundirs[i] for i in order],
                data,
            )
        except MemberRefused as err:  # named by its place in the caller's order
            raise MemberRefused(order[err.index], err.error) from err.error
        back: list[dict] = [{} for _ in configs]
        for k, i in enumerate(order):
            back[i] = ordered[k]
        return back
    if len({static_part(c) for c in configs}) != 1:  # checked once, in the ordered call
        raise ConfigError(
            f"train_group needs members that differ only in {', '.join(VECTORIZABLE)}; "
            f"these also differ in {', '.join(grouping_settings(configs))}"
        )
    t0, started = time.perf_counter(), time.time()
    base = configs[0]
    if any(c.pretrain.enabled for c in configs):
        raise ConfigError(
            "pretrain.enabled=true is a sequence of programs (layers, fine-tuning, supervised "
            "stage) that members cannot share; train each with ae_jax.train.train_and_evaluate "
            "(hydra/launcher=vmap does so by itself)"
        )
    n = len(configs)
    requested = base.trainer.devices
    # Each member's program is the single-device one (or, with a data axis, the data-parallel
    # one: _group_epoch); the members axis is what is spread over the devices.
    base = dataclasses.replace(base, trainer=dataclasses.replace(base.trainer, devices=1))
    workdirs = [Path(w) for w in workdirs]
    # members that completed this very run (a finished sweep run again): evaluated again
    # without their trackers, as a finished single run is, which already hold them (their
    # images and final metrics were logged twice)
    finished = [
        c.trainer.resume and completed_run(c, w) is not None for c, w in zip(configs, workdirs)
    ]
    with contextlib.ExitStack() as stack:
        records = hydra_files or [{} for _ in configs]
        rundirs = [
            stack.enter_context(claimed(c, w, rundir=r, hydra_files=h))
            for c, w, h, r in zip(configs, workdirs, records, rundirs or [None] * n)
        ]
        stack.enter_context(sigterm_flag())
        if data is None:
            data = load_group_data(configs, rundirs)
        trainer = Trainer(base, data)  # a batch larger than the data: the whole split
        t = trainer.cfg.trainer
        layout = group_layout(n, requested, t.batch_size)
        mesh = layout.mesh
        runs = shared_draws([c.trainer.seed for c in configs], layout.members)
        log.info(
            "vectorised sweep: %d member%s in one program%s%s | %s",
            n,
            "" if n == 1 else "s",
            layout.describe(),
            f", each {runs} members of one seed share their random draws" if runs > 1 else "",
            describe(base, trainer, devices=False, members=configs),
        )
        warn_if_anneal_unfinished(base, trainer.epochs)
        checkpointer = Checkpointer(
            group_checkpoint_dir(configs, workdirs), keep=t.keep_checkpoints
        )
        earlier = [str(w) for w, r in zip(workdirs, rundirs) if r.main and r.holds_run()]
        if t.resume and earlier and checkpointer.newest() is None:
            # a sweep run again with values added or removed groups its members otherwise:
            # a group is resumed from its own checkpoints, which these members have none of
            log.info(
                "vectorised sweep: %s held earlier runs, and this group of %d has no "
                "checkpoint (its members were grouped otherwise, or it stopped before its "
                "first): it trains from epoch 1",
                ", ".join(earlier[:3])
                + (f" and {len(earlier) - 3} more" if len(earlier) > 3 else ""),
                n,
            )
        hparams = _spread(_stack([make_hparams(c) for c in configs]), mesh)
        x_train = _spread(jnp.asarray(data.x_train), mesh, replicated=True)
        x_eval = _spread(jnp.asarray(trainer.x_eval), mesh, replicated=True)
        # The epoch program compiles on a second thread while this one initialises the
        # members: XLA compiles without holding the GIL, and on a cold cache each takes seconds.
        epoch_fn = _group_epoch(trainer, layout, runs)
        abstract = _abstract_stack(trainer.init_state(abstract=True), n, mesh)

        traces = []  # the group program is traced once (compile/epoch_traces, as a run's)

        def counted_epoch(*args):
            traces.append(1)
            return epoch_fn(*args)

        def compile_epoch():
            start = time.perf_counter()
            lowered = jax.jit(counted_epoch, donate_argnums=0).lower(
                abstract, x_train, jnp.int32(0), hparams
            )
            options = compiler_options(trainer.parallel.devices)
            return lowered.compile(compiler_options=options), time.perf_counter() - start

        def compile_evaluation():
            # The members' held-out MSE every eval_every epochs, compiled beside the epoch
            # program: jitted on first use it compiled (or loaded) at epoch eval_every while the
            # members waited, and every call took jit's slow path for the members' arrays.
            return (
                jax.jit(jax.vmap(trainer.eval_mse, in_axes=(0, None)))
                .lower(abstract.params, x_eval)
                .compile()
            )

        group = Path(os.path.commonpath([str(w.absolute()) for w in workdirs])).name
        # Opened before compiling and before any member's files change: a member whose tracker
        # cannot be opened (its tensorboard/ unwritable) is refused alone (MemberRefused), and
        # the others train without it (they had all been left saying running, without a word)
        loggers = []
        for i, (c, w, done) in enumerate(zip(configs, workdirs, finished)):
            try:
                loggers.append(
                    stack.enter_context(open_run_loggers(c, w, main=not done, group=group))
                )
            except LoggerError as err:
                raise MemberRefused(i, err) from err
        with ThreadPoolExecutor(2, thread_name_prefix="ae_jax-compile") as pool:
            compiling = pool.submit(compile_epoch)
            evaluating = pool.submit(compile_evaluation)
            # One seed at a time: the initialiser compiles once (1.5 s cold for the digits
            # model) and each further seed costs ~30 ms; vmapped it compiles for 2.7 s. A
            # state depends on its seed alone: members of one seed start from one state.
            initial = {s: trainer.init_state(seed=s) for s in {c.trainer.seed for c in configs}}
            members = [initial[c.trainer.seed] for c in configs]
            states = _spread(_stack(members), mesh)
            if t.resume:  # another group's checkpoints here: refused before anything is written
                checkpointer.check_same_run(states)
            # Every evaluation program, readied on a third thread (as a single run does) on the
            # member that evaluates the most (its denoising too), so that evaluating the
            # members after training only runs them. Started before the epoch program is
            # ready: on a cold cache its compiling then uses the core that would otherwise
            # wait for the epoch program, instead of the cores the members train on.
            warming = warm_outputs_in_background(
                max(configs, key=eval_level), trainer, jax.device_get(members[0].params)
            )
            stack.callback(warming.join)  # also when training raises
            program, compile_seconds = compiling.result()
            eval_mse = evaluating.result()
        for cfg, rundir in zip(configs, rundirs):
            rundir.start(to_yaml(cfg))
            write_run_info(  # as a single run does
                rundir.path, data, trainer.output_activation, layout.record()
            )
            write_json_atomic(
                rundir.path / "status.json",
                {"status": "running", "started": time.time(), "engine": "vmap", "members": n},
            )

        stage = Stage(
            name="",
            epochs=trainer.epochs,
            run_epoch=lambda s, e: program(s, x_train, np.int32(e), hparams),
            steps_per_epoch=trainer.steps_per_epoch,
            batch_size=t.batch_size * n,
            evaluate=lambda s: {"mse": eval_mse(s.params, x_eval)},
            eval_every=t.eval_every,
            **checkpoint_schedule(t),
            log_every=t.log_every,
            progress=t.progress,
            members=n,
            member_names=[str(w) for w in workdirs],
            member_hints=[divergence_hint(c) for c in configs],
            **trainer.selection(),  # val/ curve; early stopping per member
        )
        hooks = [epoch_logger(lg) for lg in loggers]

        def on_member_epoch(i: int, row: dict) -> None:
            if hooks[i]:
                hooks[i](row)

        on_member_epoch.flush = lambda: [lg.flush() for lg in loggers]  # before a checkpoint
        on_member_epoch.resumed = lambda epoch: [lg.resumed(epoch) for lg in loggers]
        result = run_stage(
            stage,
            states,
            checkpointer=checkpointer,
            resume=t.resume,
            allow_none_valid=t.restart_if_corrupt,
            on_member_epoch=on_member_epoch,
            snapshots=reconstruction_snapshots(configs, trainer, loggers, group=True),
        )
        seconds = result.seconds
        warming.join()
        trained = result.epochs_trained or trainer.epochs  # every session's, as seconds
        examples = trained * trainer.steps_per_epoch * t.batch_size
        params = jax.device_get(result.state.params)
        results = []
        figures: list = []  # each evaluated member's figures, drawn together below
        evaluated = []
        histories, epochs = result.history, result.member_epochs
        if epochs is not None:  # each member's record ends where its own run would have
            histories = [[r for r in h if r["epoch"] <= e] for h, e in zip(histories, epochs)]
        for i, (cfg, workdir) in enumerate(zip(configs, workdirs)):
            status = {"engine": "vmap", "members": n, "started": started}
            if i in result.failed:
                write_json_atomic(
                    workdir / "status.json",
                    {
                        **status,
                        "status": "failed",
                        # in its own directory: the message without that directory's name
                        "error": "TrainingDiverged: "
                        + result.failed[i].replace(f"{workdir}: ", "", 1),
                        "ended": time.time(),
                    },
                )
                write_history(workdir, result.history[i])
                loggers[i].close("failed")  # its trackers say so too (the others completed)
                results.append({})
                continue
            timing = {}
            if result.best_epoch is not None:
                timing["train/best_epoch"] = result.best_epoch[i]
                timing["train/epochs_trained"] = result.member_epochs[i]
            timing |= {
                "time/train_seconds": seconds,  # the whole group's wall time, shared
                "time/compile_seconds": compile_seconds,
                "compile/epoch_traces": len(traces),
                "train/samples_per_second": examples / seconds if seconds > 0 else math.nan,
                "sweep/members": n,
            }
            with member_lines(workdir):  # its test line and warnings: its train.log only
                metrics = evaluate_and_write(
                    validate(cfg),
                    trainer,
                    _member(params, i),
                    histories[i],
                    timing,
                    workdir,
                    t0,
                    loggers[i],
                    figures_later=figures,
                    who=str(workdir),
                )
            evaluated.append((i, cfg, workdir, status, metrics))
            results.append(metrics)
        # The members' figures cost more than their evaluation (~0.5 s a member against ~0.01 s
        # on this 2-core CPU): drawn on the spare cores too, then each member is finished.
        if any(f is not None for f in figures):  # matplotlib only when figures are drawn
            from ae_jax.evaluation.figures import draw_many_runs_figures

            draw_many_runs_figures([f for f in figures if f is not None])
        for i, cfg, workdir, status, metrics in evaluated:
            with member_lines(workdir):
                finish_outputs(loggers[i], cfg, workdir, histories[i], metrics)
            write_json_atomic(
                workdir / "status.json", {**status, "status": "completed", "ended": time.time()}
            )
        if result.failed:
            names = [str(workdirs[i]) for i in sorted(result.failed)]
            log.error(  # each one's reason was said when it diverged, and is in its status
                "vectorised sweep: %d of %d members diverged (%s%s); the others' results are "
                "written",
                len(result.failed),
                n,
                ", ".join(names[:5]),
                ", ..." if len(names) > 5 else "",
            )
        return results


def train_vectorized(configs: list[Config], workdirs: list[Path]) -> list[dict[str, float]]:
    """Train every config, one vectorised program per group of compatible members."""
    results: list[dict] = [{} for _ in configs]
    for group in group_by_program(configs):
        out = train_group([configs[i] for i in group], [Path(workdirs[i]) for i in group])
        for i, metrics in zip(group, out):
            results[i] = metrics
    return results
