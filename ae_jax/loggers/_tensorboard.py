"""TensorBoard event files in ``<run dir>/tensorboard/``, written with tensorboardX (no
TensorFlow): one scalar per history key and epoch, PNG figures as images, and the resolved config
with the final metrics for the HParams tab. ``tensorboard --logdir outputs/`` shows every run."""

from __future__ import annotations

import logging
import math
import os
import struct
import time
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


def stage_tag(tag: str, stage: str, nested: tuple[str, ...] = ()) -> bool:
    """Whether ``tag`` is one of stage ``stage``'s (``<stage>/...``) and not one of a stage
    whose name extends it (``baseline/supervised/...`` is not stage ``baseline``'s)."""
    return tag.startswith(f"{stage}/") and not any(tag.startswith(f"{n}/") for n in nested)


def _records(data: bytes):
    """(start, end, payload) of each whole record of a TFRecord file (length, its masked CRC,
    the payload, its masked CRC); a torn record at the end (a killed writer's) ends the list."""
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        end = pos + 12 + length + 4
        if end > len(data):
            return
        yield pos, end, data[pos + 12 : pos + 12 + length]
        pos = end


def _record(payload: bytes) -> bytes:
    from tensorboardX.record_writer import masked_crc32c

    header = struct.pack("<Q", len(payload))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + payload
        + struct.pack("<I", masked_crc32c(payload))
    )


def filter_events(path: Path, drop) -> int:
    """Take out of the event file ``path`` every summary value for which ``drop(tag, step)`` is
    true (an event left with none goes with them). Everything else stays byte for byte, a
    torn last record too. The file is replaced atomically, and only when something was taken
    out. Returns how many values were."""
    from tensorboardX.proto.event_pb2 import Event

    data = path.read_bytes()
    kept, count, done = [], 0, 0
    for start, end, payload in _records(data):
        try:
            event = Event.FromString(payload)
        except Exception:  # not an event (a torn write): it and what follows stay as they are
            break
        done = end
        values = list(event.summary.value)
        left = [v for v in values if not drop(v.tag, event.step)]
        if len(left) == len(values):
            kept.append(data[start:end])
            continue
        count += len(values) - len(left)
        if left:
            part = Event()
            part.CopyFrom(event)
            del part.summary.value[:]
            part.summary.value.extend(left)
            kept.append(_record(part.SerializeToString()))
    if not count:
        return 0
    from ae_jax.run_io import write_atomic

    kept.append(data[done:])  # a killed writer's torn last record, kept as it was
    write_atomic(path, lambda f: f.write(b"".join(kept)))
    return count


# The description of a final metric's scalar (``log_hparams``): a later session of the run, which
# trains further (more trainer.epochs), writes its own at its last step, as it writes its
# epochs' scalars; counted as per-epoch tags, the first session's final values were kept.
FINAL_METRIC = "final metric"


def _scalar_tags_and_last_step(paths: list[Path]) -> tuple[set[str], int]:
    """The scalar tags and the largest step of the event files ``paths`` (a file or record that
    cannot be read ends what is read of it)."""
    from tensorboardX.proto.event_pb2 import Event

    tags: set[str] = set()
    last = 0
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for _, _, payload in _records(data):
            try:
                event = Event.FromString(payload)
            except Exception:  # a torn write: the rest of the file is not read
                break
            scalars = [  # a session's final metrics are not the run's per-epoch tags
                v.tag
                for v in event.summary.value
                if v.WhichOneof("value") == "simple_value"
                and v.metadata.summary_description != FINAL_METRIC
            ]
            if scalars:
                tags.update(scalars)
                last = max(last, int(event.step))
    return tags, last


class TensorBoardLogger:
    """Events written in the caller's thread through tensorboardX's ``EventsWriter`` (its record
    format and CRCs), not through ``SummaryWriter``: that one hands every event to a writer
    thread over a ``multiprocessing.Queue``, whose lock and pickling cost ~0.2 ms of CPU per
    event (0.5 s for the 2,400 rows of an 8-member, 300-epoch vmap group), on a host whose
    cores the device is using. Serialising a row here costs ~20 us. Events reach the disk
    every ``flush_secs``, after any row that follows ``flush_secs`` without one (so a slow
    run's rows are visible as they come), and at ``close``."""

    def __init__(self, settings: TensorBoardSettings, logdir: Path):
        import tensorboardX  # noqa: F401  (first: a missing library fails here, by its name)
        from tensorboardX.event_file_writer import EventsWriter

        self.settings = settings
        self.logdir = logdir
        Path(logdir).mkdir(parents=True, exist_ok=True)
        # tensorboardX names the file by the second and the host: a second session opening in
        # the same second (a quick rerun) would truncate the first's file; the pid and a
        # number keep them apart
        prefix, suffix, n = str(Path(logdir) / "events"), f".{os.getpid()}", 0
        while list(Path(logdir).glob(f"events.out.tfevents.*{suffix}")):
            n += 1
            suffix = f".{os.getpid()}.{n}"
        earlier = sorted(Path(logdir).glob("events.out.tfevents.*"))
        self._events = EventsWriter(prefix, filename_suffix=suffix)
        self._last_flush = -math.inf  # the first event reaches the disk at once
        self._last_event = time.monotonic()
        # a resumed run's earlier sessions count as this run's: their scalar tags are not
        # final metrics, and the last step is theirs where this session trains no further
        # (the final metrics of a session that only restored its stages were drawn at step
        # 0, and each restored layer's last loss as a point at the run's last step)
        self._scalars, self._last_step = _scalar_tags_and_last_step(earlier)
        self._closed = False

    def _write(self, summary, step: int | None = None) -> None:
        from tensorboardX.proto.event_pb2 import Event

        event = Event(wall_time=time.time(), summary=summary)
        if step is not None:
            event.step = int(step)
        self._events.write_event(event)
        now = time.monotonic()
        due = self.settings.flush_secs
        if now - self._last_flush >= due or now - self._last_event >= due:
            self._events.flush()
            self._last_flush = now
        self._last_event = now

    def log_metrics(self, row: dict[str, float], step: int) -> None:
        # One event holding the row's scalars (TensorBoard reads each value as its own scalar
        # series), not one event per scalar: a vmap group logs every member's row each epoch.
        from tensorboardX.proto.summary_pb2 import Summary

        self._write(
            Summary(value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in row.items()]),
            step,
        )
        self._scalars.update(row)
        self._last_step = max(self._last_step, step)

    def log_image(self, tag: str, png_path: Path, step: int) -> None:
        # The PNG as it is (no decode and re-encode): an image summary holds encoded bytes.
        from tensorboardX.proto.summary_pb2 import Summary

        data = png_path.read_bytes()
        height, width, channels = _png_header(data)
        image = Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=data
        )
        self._write(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        # Final metrics that are not already per-epoch scalars become scalars at the last step;
        # the HParams tab reads each metric's latest scalar of this run.
        from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

        final = {k: v for k, v in metrics.items() if k not in self._scalars}
        if final:
            mark = SummaryMetadata(summary_description=FINAL_METRIC)
            values = [
                Summary.Value(tag=k, simple_value=float(v), metadata=mark) for k, v in final.items()
            ]
            self._write(Summary(value=values), self._last_step)
            self._scalars.update(final)
        if self.settings.hparams:
            from tensorboardX.summary import hparams as hparams_summary

            values = {k: v for k, v in hparams.items() if isinstance(v, (bool, int, float, str))}
            for summary in hparams_summary(values, dict(metrics)):
                self._write(summary)
        self._events.flush()

    def resumed(self, epoch: int) -> None:
        """A restart after ``epoch``: TensorBoard drops the events of every tag from step
        ``epoch + 1`` on that came before this one (a killed session's, flushed after its last
        checkpoint), so the resumed epochs are not drawn twice."""
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        start = SessionLog(status=SessionLog.START)
        self._events.write_event(Event(wall_time=time.time(), step=epoch + 1, session_log=start))

    def stage_resumed(self, stage: str, epoch: int, nested: tuple[str, ...] = ()) -> None:
        """Stage ``stage`` of a multi-stage run goes on from its checkpoint of ``epoch``: the
        events of its tags (``<stage>/...``, not those of a stage nested in it, ``nested``)
        after that epoch, which a killed session wrote, are taken out of the earlier event
        files. (A restart mark would drop the other stages' events too: every stage counts its
        epochs from 1.)"""

        def stale(tag: str, step: int) -> bool:
            return step > epoch and stage_tag(tag, stage, nested)

        own = Path(self._events._file_name) if hasattr(self._events, "_file_name") else None
        for path in sorted(Path(self.logdir).glob("events.out.tfevents.*")):
            if own is None or path.resolve() != own.resolve():
                filter_events(path, stale)

    def flush(self) -> None:
        if not self._closed:
            self._events.flush()
            self._last_flush = time.monotonic()

    def close(self, status: str = "completed") -> None:
        if not self._closed:
            self._closed = True
            self._events.close()


def open_tensorboard(
    settings: TensorBoardSettings,
    *,
    workdir: Path,
    run_name: str,
    config: dict,
    group: str | None = None,
    fresh: bool = False,
) -> TensorBoardLogger:
    del run_name, config, group  # the directory is the run; the config goes in at the end
    logdir = Path(workdir) / "tensorboard"
    earlier = sorted(logdir.glob("events.out.tfevents.*")) if fresh else []
    if earlier:  # an earlier run of another config: TensorBoard shows it as a run of its own
        aside = logdir / f"before-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(parents=True, exist_ok=True)
        for path in earlier:
            path.rename(aside / path.name)
        logging.getLogger("ae_jax").info(
            "TensorBoard: the earlier config's events moved to %s (a run of their own)", aside
        )
    return TensorBoardLogger(settings, logdir)
