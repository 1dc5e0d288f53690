"""Weights & Biases: one W&B run per ae-jax run, under ``<run dir>/wandb/``.

Offline unless the machine is logged in (``mode: auto``): then ``wandb sync <run dir>/wandb/
offline-run-*`` uploads it later. W&B's own messages go to its log files
(``<run dir>/wandb/.../logs/``), not to the console; the training output is not captured.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ae_jax.loggers.registry import WandbSettings
from ae_jax.network import unreachable


def logged_in() -> bool:
    """Whether W&B has credentials: ``WANDB_API_KEY``, or a ``~/.netrc`` (``$NETRC``) login for
    the host W&B would use (``_base_url``: ``WANDB_BASE_URL``, its settings, its default, which
    is api.forge.coreweave.com in wandb 0.31) or for api.wandb.ai (a login of before)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    urls = [os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"]
    try:
        import wandb

        urls.append(_base_url(wandb))
    except ImportError:
        pass
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        logins = netrc.netrc(path)
    except (OSError, netrc.NetrcParseError):
        return False
    return any(logins.authenticators(urlparse(u).hostname or "") for u in urls)


def resolve_mode(settings: WandbSettings) -> str:
    """``settings.mode``, with ``auto`` as ``$WANDB_MODE`` when set, else online when logged in
    and offline otherwise."""
    if settings.mode != "auto":
        return settings.mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if logged_in() else "offline"


class WandbLogger:
    def __init__(self, run: Any, config_given: bool):
        self.run = run
        self._config_given = config_given
        self._closed = False
        self._stages: set[str] = set()  # the stages of a multi-stage run, each its own x axis

    def log_metrics(self, row: dict[str, float], step: int) -> None:
        self.run.log(row, step=step)

    def log_stage_metrics(self, row: dict[str, float], step: int, stage: str) -> None:
        """A stage's row: W&B drops a row logged at a step below one it has seen, and every
        stage counts its epochs from 1, so each stage's keys get their own x axis,
        ``<stage>/epoch`` (``define_metric``), and W&B numbers the rows itself."""
        if stage not in self._stages:
            self._stages.add(stage)
            self.run.define_metric(f"{stage}/epoch")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/epoch")
        self.run.log({**row, f"{stage}/epoch": step})

    def log_image(self, tag: str, png_path: Path, step: int) -> None:
        import wandb

        image = {tag: wandb.Image(str(png_path))}
        stage = next((s for s in self._stages if tag.startswith(f"{s}/")), None)
        if stage is not None:  # a stage's image, on that stage's x axis
            self.run.log({**image, f"{stage}/epoch": step})
        elif self._stages:  # after stages, W&B numbers the rows
            self.run.log(image)
        else:
            self.run.log(image, step=step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if not self._config_given:  # the config went in at wandb.init otherwise
            self.run.config.update(hparams, allow_val_change=True)
        self.run.summary.update(metrics)

    def close(self, status: str = "completed") -> None:
        if not self._closed:
            self._closed = True
            if status == "preempted":
                self.run.mark_preempting()
            self.run.finish(exit_code=0 if status == "completed" else 1)


def open_wandb(
    settings: WandbSettings,
    *,
    workdir: Path,
    run_name: str,
    config: dict,
    group: str | None = None,
    fresh: bool = False,
) -> WandbLogger:
    os.environ.setdefault("WANDB_SILENT", "true")  # before the import: W&B reads it early
    import wandb

    mode = resolve_mode(settings)
    if mode == "online":  # offline, W&B retries its server for 90 s before it gives up
        base = _base_url(wandb)
        problem = unreachable([base])
        if problem is not None:
            from ae_jax.loggers import LoggerError

            raise LoggerError(
                f"logger=wandb: W&B's server {base} is needed for an online run but {problem}; "
                "log offline instead (logger.wandb.mode=offline; later: wandb sync <run "
                "dir>/wandb/offline-run-*)"
            )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # an earlier run of another config (fresh) is kept: this one gets an id of its own
    earlier = None if fresh else earlier_run_id(workdir)
    run = wandb.init(
        id=earlier,  # a resumed run goes on in the W&B run it began (None: a new one)
        resume="allow" if earlier else None,
        project=settings.project,
        entity=settings.entity,
        dir=str(workdir),  # W&B adds wandb/
        name=run_name,
        group=group,
        config=dict(config) or None,
        tags=list(settings.tags) or None,
        notes=settings.notes,
        mode=mode,
        reinit="create_new",  # several runs in one process (a vectorised sweep, tests)
        settings=wandb.Settings(silent=True, console="off", disable_git=False),
    )
    return WandbLogger(run, config_given=bool(config))


def earlier_run_id(workdir: Path) -> str | None:
    """The id of the W&B run an earlier session of this run directory began, from the record
    W&B keeps of it (``wandb/[offline-]run-<time>-<id>[-n]/run-<id>.wandb``)."""
    records = (Path(workdir) / "wandb").glob("*run-*/run-*.wandb")
    newest = max(records, key=lambda p: p.stat().st_mtime, default=None)
    return newest.stem.removeprefix("run-") if newest is not None else None


def _base_url(wandb: Any) -> str:
    """The server an online run would use: W&B's default, then its settings files (``wandb
    login --host``), then ``$WANDB_BASE_URL``, in W&B's own order."""
    settings = wandb.Settings()
    try:
        settings.update_from_system_settings()
        settings.update_from_env_vars(dict(os.environ))
    except Exception:  # another W&B version: its default is still the right guess
        pass
    return settings.base_url
