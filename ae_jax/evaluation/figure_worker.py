"""A process that draws runs' figures for ``draw_many_runs_figures``.

``Worker`` starts a fresh Python running ``serve()`` (this ae_jax first on its path): it reads
pickled ``RunFigures`` from stdin, each with the matplotlib settings its parent changed, draws
each (``draw_run_figures``) and answers on stdout with the pickled exception it raised, or None;
it stops at the end of its input (its parent closed the pipe, or died).
"""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
from pathlib import Path


class Worker:
    """A figure worker process, started on creation."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # this ae_jax's, whatever the cwd holds
        start = "from ae_jax.evaluation.figure_worker import serve; serve()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r}); {start}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.alive = True

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def send(self, job, rc: dict) -> bool:
        """Hand the worker one run, drawn under the matplotlib settings ``rc``; False if it has
        died."""
        data = pickle.dumps((job, rc))
        try:  # framed: the worker reads the whole run before unpickling it (see serve)
            self.proc.stdin.write(len(data).to_bytes(8, "little") + data)
            self.proc.stdin.flush()
            return True
        except OSError:  # a broken pipe: the worker is gone
            self.alive = False
            return False

    def receive(self) -> tuple[bool, BaseException | None]:
        """(finished, the error the run's figures raised or None); finished is False when the
        worker died before answering."""
        try:
            return True, pickle.load(self.proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            self.alive = False
            return False, None

    def close(self, kill: bool = False) -> None:
        """End the worker: at once if ``kill`` (it is drawing a run no one waits for), else once
        it has read the end of its input."""
        if kill:
            self.proc.kill()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def serve() -> None:
    """The worker's loop (see the module docstring). Each run arrives as 8 bytes of length and
    its pickle, read whole before unpickling: unpickling imports matplotlib (~0.5 s), and a
    parent writing a run larger than the pipe holds (an MNIST layer's kernel) would wait that
    long. matplotlib is imported on a thread meanwhile, while the first run is awaited."""
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=_import_figures, daemon=True).start()
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers on the answer pipe
    while True:
        header = inp.read(8)
        data = inp.read(int.from_bytes(header, "little")) if len(header) == 8 else b""
        if not data:  # the end of the input: the parent is done (or gone)
            return
        answer = None
        try:
            import matplotlib

            from ae_jax.evaluation.figures import draw_run_figures

            job, rc = pickle.loads(data)
            with matplotlib.rc_context(rc):
                draw_run_figures(job)
        except Exception as err:  # raised in the parent, as if it had drawn the run itself
            answer = err
        try:
            reply = pickle.dumps(answer)
        except Exception:  # an exception that does not pickle: its type and message
            reply = pickle.dumps(RuntimeError(f"{type(answer).__name__}: {answer}"))
        out.write(reply)
        out.flush()


def _import_figures() -> None:
    import ae_jax.evaluation.figures  # noqa: F401
