"""TensorBoard event files in ``<run dir>/tensorboard/``, written with tensorboardX (no
TensorFlow): one scalar per history key and epoch, PNG figures as images, and the resolved config
with the final metrics for the HParams tab. ``tensorboard --logdir outputs/`` shows every run."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from ae_jax.loggers.registry import TensorBoardSettings

# PNG colour type -> channels (TensorBoard's image summaries carry the channel count).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def _png_header(data: bytes) -> tuple[int, int, int]:
    """(height, width, channels) of a PNG from its IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return height, width, _PNG_CHANNELS.get(data[25], 4)


class TensorBoardLogger:
    def __init__(self, settings: TensorBoardSettings, logdir: Path):
        from tensorboardX import SummaryWriter

        self.settings = settings
        self.logdir = logdir
        self.writer = SummaryWriter(logdir=str(logdir), flush_secs=settings.flush_secs)
        self._last_step = 0
        self._scalars: set[str] = set()
        self._closed = False

    def log_metrics(self, row: dict[str, float], step: int) -> None:
        # One event holding the row's scalars (TensorBoard reads each value as its own scalar
        # series), not one event per scalar: a vmap group logs every member's row each epoch.
        from tensorboardX.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in row.items()]
        self.writer._get_file_writer().add_summary(Summary(value=values), global_step=step)
        self._scalars.update(row)
        self._last_step = max(self._last_step, step)
        self._last_step = max(self._last_step, step)

    def log_image(self, tag: str, png_path: Path, step: int) -> None:
        # The PNG as it is (no decode and re-encode): an image summary holds encoded bytes.
        from tensorboardX.proto.summary_pb2 import Summary

        data = png_path.read_bytes()
        height, width, channels = _png_header(data)
        image = Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=data
        )
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        self.writer._get_file_writer().add_summary(summary, global_step=step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        # Final metrics that are not already per-epoch scalars become scalars at the last step;
        # the HParams tab reads each metric's latest scalar of this run.
        for key, value in metrics.items():
            if key not in self._scalars:
                self.writer.add_scalar(key, value, global_step=self._last_step)
                self._scalars.add(key)
        if not self.settings.hparams:
            return
        from tensorboardX.summary import hparams as hparams_summary

        values = {k: v for k, v in hparams.items() if isinstance(v, (bool, int, float, str))}
        experiment, start, end = hparams_summary(values, dict(metrics))
        writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            writer.add_summary(summary)
        self.writer.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.writer.close()


def open_tensorboard(
    settings: TensorBoardSettings,
    *,
    workdir: Path,
    run_name: str,
    config: dict,
    group: str | None = None,
) -> TensorBoardLogger:
    del run_name, config, group  # the directory is the run; the config goes in at the end
    return TensorBoardLogger(settings, Path(workdir) / "tensorboard")
