"""Draw figures in one worker process per run, so drawing never competes with training for the GIL.

The run's background thread sends a pickled drawing function and its arguments to the worker, which
answers with the ``Figure`` it returns as PNG; the background thread writes it as an image summary.
The worker is this file run by path with ``subprocess.Popen``, not ``multiprocessing``: spawn and
forkserver import the user's ``__main__`` again, re-running a training script that has no
``if __name__ == "__main__"`` guard; running the file (not ``-m``) also keeps torch out of the worker.
It has a session of its own (Ctrl-C reaches the training process only), is killed when the run closes,
and exits by itself when the training process is gone, even in the middle of a drawing."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection, Pipe
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from torch.utils.tensorboard import SummaryWriter

    from tbhooks.background import Background

WARM_UP = "tbhooks_warm_up"
"""A preloaded module's function of this name is called once when the worker starts (errors ignored)."""


class RenderError(RuntimeError):
    """A drawing function failed in the worker process, or the worker died or hung before answering."""


def render_png(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, int, int]:
    """Call ``fn(*args, **kwargs)`` and save the ``Figure`` it returns as PNG: ``(png, width, height)``.
    ``print_png``, not ``savefig``, whose matplotlibrc settings would change the PNG's size and colours."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = fn(*args, **kwargs)
    if not isinstance(figure, Figure):
        raise TypeError(f"the drawing function returned a {type(figure).__name__}; expected a matplotlib Figure")
    canvas = FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    width, height = canvas.get_width_height()
    return buffer.getvalue(), width, height


class _RequestPickler(pickle.Pickler):
    """Refuses torch tensors: unpickling one would import torch in the worker, which then starts slowly."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj).__module__.startswith("torch"):
            raise TypeError(
                f"render_image got a {type(obj).__module__}.{type(obj).__name__}; "
                f"pass numpy arrays (tensor.cpu().numpy()) and plain Python values"
            )
        return NotImplemented


def pickle_request(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The request's bytes; a ``TypeError`` naming what cannot be sent (a tensor, a lambda, ...)."""
    if getattr(fn, "__module__", None) == "__main__" or "<locals>" in getattr(fn, "__qualname__", "<locals>"):
        raise TypeError(f"render_image needs an importable module-level function, got {fn!r}")
    buffer = io.BytesIO()
    try:
        _RequestPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump((fn, args, kwargs))
    except (pickle.PicklingError, AttributeError) as exc:
        raise TypeError(f"render_image cannot send its arguments to the render worker: {exc}") from None
    return buffer.getvalue()


class Renderer:
    """The training process's side of the render worker: started on first use, one request at a time.
    A worker that dies or does not answer within :attr:`timeout` seconds is an error of the plugin that asked;
    the next request starts a new one.  Where no process can be started, the background thread draws."""

    timeout = 120.0
    """Seconds one drawing may take before the worker is killed."""

    def __init__(self, background: Background, writer: SummaryWriter) -> None:
        self._background = background
        self._writer = writer
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None
        self._preload: tuple[str, ...] = ()
        self._in_process = False

    @property
    def pid(self) -> int | None:
        """The worker's process id, while it runs."""
        return self._process.pid if self._process is not None else None

    def start(self, preload: Sequence[str] = ()) -> None:
        """Start the worker now (its imports overlap with training) and import ``preload`` in it."""
        self._preload = tuple(dict.fromkeys([*self._preload, *preload]))
        with self._lock:
            if self._process is None and not self._in_process:
                self._spawn()

    def _spawn(self) -> None:
        ours, theirs = Pipe()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        try:
            self._process = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError:
            self._in_process = True  # no worker process here: draw on the background thread
            ours.close()
            return
        finally:
            theirs.close()
        self._connection = ours
        try:
            ours.send((list(sys.path), list(self._preload)))
        except OSError:  # a worker that died at once is reported by the first request
            pass

    def submit(
        self, owner: object, tag: str, step: int, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Send ``fn(*args, **kwargs)`` to be drawn and written as image ``tag`` at ``step``."""
        payload = pickle_request(fn, args, kwargs)
        self._background.submit(owner, self._draw, (tag, step, payload), {})

    def _draw(self, tag: str, step: int, payload: bytes) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        try:
            png, width, height = self._render(payload)
        except RenderError as exc:
            raise RenderError(f"render_image({tag!r}, step={step}): {exc}") from None
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        # SummaryWriter has no method taking an encoded PNG (add_image would encode again): use its file writer.
        self._writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def _render(self, payload: bytes) -> tuple[bytes, int, int]:
        with self._lock:
            if self._process is None and not self._in_process:
                self._spawn()
        if self._in_process:
            return render_png(*pickle.loads(payload))
        connection, process = self._connection, self._process
        assert connection is not None and process is not None
        try:
            connection.send_bytes(payload)
            if not connection.poll(self.timeout):
                process.kill()
                raise RenderError(f"the render worker did not answer within {self.timeout:g} s and was killed")
            answer = connection.recv()
        except (EOFError, OSError):
            status = process.wait()
            self._forget()
            raise RenderError(f"the render worker exited (status {status}) before answering") from None
        except RenderError:
            process.wait()
            self._forget()
            raise
        if answer[0] == "error":
            raise RenderError(f"the drawing function raised in the render worker:\n{answer[1]}")
        return answer[1], answer[2], answer[3]

    def _forget(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
            self._process = self._connection = None

    def close(self) -> None:
        """Kill the worker: the run's close already waited for every drawing, and it may still be importing."""
        process = self._process
        self._forget()
        if process is not None:
            process.kill()
            process.wait()


# The worker process: this file run as a script (no torch, no tbhooks).


def _answer(payload: bytes) -> tuple[Any, ...]:
    try:
        return ("png", *render_png(*pickle.loads(payload)))
    except Exception:
        return ("error", traceback.format_exc())


def _exit_with(parent: int) -> None:
    """End this process once process ``parent`` is gone (this one then has another parent)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def worker_main(argv: list[str]) -> int:
    """Serve drawing requests on the connection whose descriptor is ``argv[0]`` until the run ends;
    ``argv[1]`` is the training process's id (the worker ends when it is gone)."""
    import importlib

    try:
        os.nice(10)  # where cores are short, the training process gets them first
    except OSError:
        pass
    threading.Thread(target=_exit_with, args=(int(argv[1]),), daemon=True).start()
    connection = Connection(int(argv[0]))
    try:
        path, preload = connection.recv()
        sys.path[:] = [entry for entry in path if entry != os.path.dirname(os.path.abspath(__file__))]
        for name in preload:
            try:
                warm_up = getattr(importlib.import_module(name), WARM_UP, None)
                if callable(warm_up):
                    warm_up()
            except Exception:  # the real request reports what is wrong
                pass
        while True:
            connection.send(_answer(connection.recv_bytes()))
    except (EOFError, OSError):  # the training process closed the connection or is gone
        pass
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
