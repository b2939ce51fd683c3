"""Draw images in a worker process, so that drawing never competes with training for the GIL.

Drawing a matplotlib figure is pure-Python work: on a thread of the training
process it holds the GIL for most of its time and slows the training thread
down while it runs.  :meth:`tbhooks.run.Run.render_image` sends the work to
one worker *process* per run instead; only a pickled request crosses (a
function reference and small arrays), and only the PNG comes back.

The worker is started with ``subprocess.Popen`` running this file (not
``multiprocessing``: its spawn and forkserver methods import the user's
``__main__`` script again in the child, which runs a training script that has
no ``if __name__ == "__main__"`` guard a second time).  It is started by
running this file's path, not ``-m tbhooks.render_worker``, because importing
the ``tbhooks`` package imports torch; the worker imports only numpy,
TensorBoard's protobufs and whatever the drawing function's module imports.

Protocol, both ways: an 8-byte id and an 8-byte length (big-endian), then
that many bytes.

* The first message (id 0) is the parent's ``sys.path``, pickled, so that
  the worker imports the same modules (the script's own directory included).
* A request (id >= 1) is the pickle of ``(fn, args, kwargs, tag)``; the id
  travels outside the pickle so that a request the worker cannot even
  unpickle (``fn``'s module missing) is still answered.
* An answer carries the request's id and the pickle of ``(summary, error)``:
  the serialized ``Summary`` proto of one image (what
  ``SummaryWriter.add_image`` writes), or the worker's traceback as text.
* An empty message (id 0, length 0) asks the worker to exit; so does the end
  of its stdin (the parent closed the pipe or died).

At its first request that is not a warm-up, the worker forks a second
drawing process (:class:`_Drawer`) and hands it each request that arrives
while it is free, so two figures asked at once are drawn side by side; the
parent writes the images in the order it asked for them, whichever comes
back first.

The worker ignores SIGINT and SIGTERM (blocked from its first instruction,
ignored once it runs): Ctrl-C in a terminal and a SIGTERM to the process group
reach it too, and the parent decides when it ends, after the run's close has
waited for every image it asked for.  It runs at a lower priority (nice 10),
so that where cores are short the training process gets them first, and with
one thread for numerical libraries.
"""

from __future__ import annotations

import collections
import importlib
import io
import itertools
import logging
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import types
import warnings
import zlib
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("tbhooks")

_HEADER = struct.Struct(">QQ")  # message id, body length
_PATH_ID = 0
_PICKLE = pickle.HIGHEST_PROTOCOL
# Each drawing process draws one figure at a time and needs no thread pools; the training process keeps its cores.
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
_WORKER_NICE = 10
_IGNORED_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_HEADER = struct.Struct(">IIBBBBB")  # width, height, bit depth, colour type, compression, filter, interlace
_PNG_LENGTH = struct.Struct(">I")
DRAWERS = 1 if os.environ.get("TBHOOKS_RENDER_DRAWERS") == "1" else 2
"""Drawing processes of the worker: itself and, where ``os.fork`` exists, a fork of it (see :class:`_Drawer`).
``TBHOOKS_RENDER_DRAWERS=1`` keeps it to one."""
_FORK_AFTER_IDLE_S = 0.2
"""Seconds without a request, after the warm-ups, before the worker forks its second drawer."""
WARM_UP_TAG = "warm-up"
"""The tag of a warm-up request (:meth:`tbhooks.run.Run.warm_up_render`): drawn, never written."""
WARM_UP = "tbhooks_warm_up"
"""A preloaded module's function of this name is called once when the worker starts (errors ignored)."""


class RenderError(RuntimeError):
    """A drawing function failed in the worker process, or the worker died before answering."""


# ---------------------------------------------------------------------------
# shared by both sides
# ---------------------------------------------------------------------------


def _write_message(stream: IO[bytes], ident: int, body: bytes) -> None:
    # One write, not the header's and the body's: a body larger than the stream's buffer made
    # them two system calls, and each woke the process reading the pipe (each wake-up can
    # take the writer's core for a while: seen as milliseconds in a plugin's evaluation hook).
    stream.write(_HEADER.pack(ident, len(body)) + body)
    stream.flush()


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    """``size`` bytes, fewer only at the end of the stream.  An unbuffered stream's read of a pipe
    returns what the pipe holds, which may be less: it is read again."""
    data = stream.read(size)
    if len(data) == size or not data:
        return data
    chunks, got = [data], len(data)
    while got < size and (more := stream.read(size - got)):
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


def _read_message(stream: IO[bytes]) -> tuple[int, bytes] | None:
    """The next ``(id, body)``, or ``None`` at the end of the stream (the other side is gone)."""
    header = _read_exactly(stream, _HEADER.size)
    if len(header) < _HEADER.size:
        return None
    ident, length = _HEADER.unpack(header)
    body = _read_exactly(stream, length) if length else b""
    if len(body) < length:
        return None
    return ident, body


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return _PNG_LENGTH.pack(len(data)) + kind + data + _PNG_LENGTH.pack(zlib.crc32(data, zlib.crc32(kind)))


def encode_png(pixels: Any) -> bytes:
    """``pixels`` (a ``uint8`` numpy array ``[H, W, 3]`` or ``[H, W, 4]``) as a PNG file: 8-bit RGB or
    RGBA, no row filter, zlib level 1.

    Not PIL's encoder: on a 580x570 figure it takes about 10 ms (at any
    compression level: most of it is choosing row filters), this about 5 ms
    for a file of about the same size.  Figures are mostly flat colour, where
    row filters gain little; a photograph comes out larger than PIL would make
    it.  The run's close waits for the last figures, so this time counts.
    """
    import numpy as np

    height, width, channels = pixels.shape
    rows = np.zeros((height, width * channels + 1), dtype=np.uint8)  # each row: filter type 0, then its bytes
    rows[:, 1:] = pixels.reshape(height, width * channels)
    header = _PNG_HEADER.pack(width, height, 8, 2 if channels == 3 else 6, 0, 0, 0)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)),
            _png_chunk(b"IEND", b""),
        )
    )


def image_summary(pixels: Any, tag: str) -> bytes:
    """The serialized ``Summary`` with image ``tag``: what ``add_image(tag, pixels, dataformats="HWC")`` writes,
    with the PNG encoded by :func:`encode_png` (the same pixels, encoded faster).

    ``pixels`` must be a ``uint8`` numpy array ``[H, W, 3]`` (RGB), ``[H, W, 4]``
    (RGBA, kept with colour space 4, as ``add_image`` keeps it), or grey
    ``[H, W]`` / ``[H, W, 1]`` (written as RGB, as ``add_image`` does).
    """
    import numpy as np
    from tensorboard.compat.proto.summary_pb2 import Summary

    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"the drawing function returned a {type(pixels).__name__}; expected a numpy uint8 array")
    if pixels.dtype != np.uint8:
        raise TypeError(
            f"the drawing function returned a {pixels.dtype} array; expected uint8 "
            f"(for floats in [0, 1]: (pixels * 255).round().astype(numpy.uint8))"
        )
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4) or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(
            f"the drawing function returned an array of shape {list(pixels.shape)}; expected [H, W, 3] (RGB), "
            f"[H, W, 4] (RGBA) or [H, W] (grey), H and W > 0"
        )
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    height, width, channels = pixels.shape
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=encode_png(pixels))
    return Summary(value=[Summary.Value(tag=tag, image=image)]).SerializeToString()


# ---------------------------------------------------------------------------
# the worker process
# ---------------------------------------------------------------------------


def _answer(body: bytes, request: tuple[Any, ...] | None = None) -> tuple[bytes | None, str | None]:
    """``(summary, error)`` for a request's ``body``; ``request`` is that body unpickled, when the caller
    has done it already."""
    try:
        fn, args, kwargs, tag = pickle.loads(body) if request is None else request
        return image_summary(fn(*args, **kwargs), tag), None
    except Exception:
        return None, traceback.format_exc().rstrip()


def worker_main() -> int:
    """The worker's loop: answer requests from stdin on stdout until told to stop or stdin ends."""
    for signum in _IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        # Blocked since the parent started this process: one that arrived meanwhile is now dropped.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _IGNORED_SIGNALS)
    try:
        os.nice(_WORKER_NICE)  # the training process comes first when cores are short
    except (AttributeError, OSError):
        pass
    # The pipes get their own descriptors; fds 0 and 1 are pointed elsewhere so that a
    # drawing function that prints (or reads stdin) cannot corrupt the protocol.
    # Unbuffered: the worker tells "nothing more to do" from its descriptor (_arrives), and a buffer
    # would hold requests already read from it (several warm-ups, say) where that cannot see them.
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    answers = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    # The parent's pid comes on the command line: by now the parent may be gone already.
    _watch_parent(int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid())

    first = _read_message(requests)
    if first is None:
        return 0
    path, preload = pickle.loads(first[1])
    sys.path[:] = path
    # Loaded now, while the worker waits, rather than in the first request.
    import numpy  # noqa: F401
    import tensorboard.compat.proto.summary_pb2  # noqa: F401

    for name in preload:  # what the run's plugins will draw with (matplotlib, say)
        try:
            module = importlib.import_module(name)
            # The first figure a process draws loads fonts and fills caches (half a second with
            # matplotlib): a module that offers a warm-up pays that now, while training runs.
            warm_up = getattr(module, WARM_UP, None)
            if callable(warm_up):
                warm_up()
        except Exception:
            pass

    with answers:
        _serve(requests, answers)
    # Closing the answers pipe (leaving the block) tells the parent the worker is done; it need not
    # wait while the kernel tears the process down.
    return 0


def _arrives(stream: IO[bytes], seconds: float) -> bool:
    """Whether ``stream``'s descriptor has something to read within ``seconds``; True where it cannot tell
    (a closed stream, say: the read that follows finds out, and nothing is forked for it)."""
    try:
        ready, _, _ = select.select([stream], [], [], seconds)
    except (OSError, ValueError):
        return True
    return bool(ready)


def _serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """Answer requests until told to stop or stdin ends.

    Warm-ups are drawn here.  Once the warm-ups are drawn and no request
    has come for :data:`_FORK_AFTER_IDLE_S` (training runs meanwhile), or at
    the first other request if that comes sooner, the second drawer
    (:class:`_Drawer`) is forked, warm with every template the warm-ups
    built; from then on each request goes to the drawer when it is free, else
    is drawn here, and a warm-up goes to both.
    """
    lock = threading.Lock()  # answers come from this thread and from the drawer's relay

    def send(ident: int, payload: bytes) -> None:
        with lock:
            _write_message(answers, ident, payload)

    drawer: _Drawer | None = None
    forked = DRAWERS < 2
    warmed = False
    warm_ups: list[tuple[int, bytes]] = []  # drawn here before the fork: the drawer draws them again
    try:
        while True:
            if not forked and warmed and not _arrives(requests, _FORK_AFTER_IDLE_S):
                forked = True
                drawer = _Drawer.fork((requests, answers))
                if drawer is not None:
                    drawer.relay(send)
                    # The drawer shares the worker's memory until it writes to it: its first figure
                    # would copy every page it touches (Python objects' counts, the templates' pixels),
                    # which took it about twice a warm figure's time.  Drawing the warm-ups again now,
                    # while training runs, makes those copies before a figure waits for them.  Their
                    # answers are second answers to warm-ups, which the parent drops.
                    for ident, body in warm_ups:
                        drawer.give(ident, body)
                warm_ups.clear()
            message = _read_message(requests)
            if message is None or (message[0] == _PATH_ID and not message[1]):
                return
            ident, body = message
            try:
                request: tuple[Any, ...] | None = pickle.loads(body)
            except Exception:
                request = None  # _answer unpickles it again and reports why it cannot
            warm_up = request is not None and request[3] == WARM_UP_TAG
            if not warm_up and not forked:
                forked = True
                warm_ups.clear()  # too late to draw them again: this request may want the drawer
                drawer = _Drawer.fork((requests, answers))
                if drawer is not None:
                    drawer.relay(send)
            if drawer is not None:
                if warm_up:
                    drawer.give(ident, body)  # its answer is a second one for the same id: the parent drops it
                elif drawer.give_if_free(ident, body):
                    continue
            try:
                send(ident, pickle.dumps(_answer(body, request), protocol=_PICKLE))
            except (BrokenPipeError, OSError, ValueError):
                return  # the parent is gone
            if warm_up and not forked:
                warm_ups.append((ident, body))
            warmed = warmed or warm_up
    finally:
        if drawer is not None:
            drawer.close()


class _Drawer:
    """The worker's second drawing process: a fork of the warm worker, fed through a pipe.

    Where an evaluation asks for two figures at once (a confusion matrix and
    the predictions, say) the two are drawn side by side, on two cores, and
    the run's close, which waits for the last figures, waits less.  The fork
    happens after the worker's imports and warm-ups, so it costs a few
    milliseconds and no start-up of its own (a second worker started from
    scratch competed with training for a second of CPU and was slower in the
    benchmark); and while the worker idles.  Right after the fork the drawer
    draws the worker's warm-ups again (about 60 ms of CPU on a core training
    leaves free, at the worker's low priority): until it writes to a page it
    shares it with the worker, and its first figure copied every page it
    touched, which made that figure take about twice a warm one's time (in
    probes of the benchmark's all row, the confusion matrix drawn by the
    drawer took 25 to 55 ms before, 25 to 38 ms after).  It ends
    when its pipe does (the worker exited or closed it) or when the worker
    is gone.
    """

    def __init__(self, pid: int, inbox: IO[bytes], outbox: IO[bytes]) -> None:
        self.pid = pid
        self._inbox = inbox  # requests to the drawer
        self._outbox = outbox  # its answers
        self._lock = threading.Lock()
        self._given: set[int] = set()  # ids given and not answered yet
        self._dead = False
        self._relay: threading.Thread | None = None

    @classmethod
    def fork(cls, inherited: Sequence[IO[bytes]]) -> _Drawer | None:
        """Fork the drawer; ``None`` where the platform has no ``fork`` or it fails."""
        if not hasattr(os, "fork"):
            return None
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
        worker = os.getpid()
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns about forking a process with threads: the worker's only other thread
                # sleeps in time.sleep and holds no lock the drawer needs.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError:
            for fd in (requests_r, requests_w, answers_r, answers_w):
                os.close(fd)
            return None
        if pid == 0:  # the drawer
            status = 0
            try:
                os.close(requests_w)
                os.close(answers_r)
                for stream in inherited:  # the worker's pipes to the parent: their ends must be the worker's alone
                    os.close(stream.fileno())
                _watch_parent(worker)
                with os.fdopen(requests_r, "rb") as inbox, os.fdopen(answers_w, "wb") as outbox:
                    while (message := _read_message(inbox)) is not None:
                        ident, body = message
                        _write_message(outbox, ident, pickle.dumps(_answer(body), protocol=_PICKLE))
            except BaseException:
                status = 1
            os._exit(status)
        os.close(requests_r)
        os.close(answers_w)
        return cls(pid, os.fdopen(requests_w, "wb"), os.fdopen(answers_r, "rb"))

    def give(self, ident: int, body: bytes) -> None:
        """Queue a request for the drawer (called by the worker's main thread only)."""
        with self._lock:
            if self._dead:
                return
            self._given.add(ident)
        # Written without the lock: the relay must be able to take answers meanwhile, or a drawer
        # blocked on a full answers pipe and this write on a full requests pipe would wait for each other.
        try:
            _write_message(self._inbox, ident, body)
        except (OSError, ValueError):
            with self._lock:
                self._given.discard(ident)
                self._dead = True

    def give_if_free(self, ident: int, body: bytes) -> bool:
        """Hand the request over if the drawer has nothing to do; False when it is busy or gone."""
        with self._lock:
            if self._dead or self._given:
                return False
        self.give(ident, body)
        with self._lock:
            # Handed over, unless the write failed (then it is drawn by the caller).  An id the relay
            # already answered is gone from _given too, but then the drawer is not dead.
            return not (self._dead and ident not in self._given)

    def relay(self, send: Callable[[int, bytes], None]) -> None:
        """Forward the drawer's answers with ``send`` (on a thread); when it dies first, answer what it held
        with an error, so that the parent never waits for them."""

        def run() -> None:
            while (message := _read_message(self._outbox)) is not None:
                ident, payload = message
                with self._lock:
                    self._given.discard(ident)
                try:
                    send(ident, payload)
                except (OSError, ValueError):
                    return
            with self._lock:
                self._dead = True
                lost, self._given = sorted(self._given), set()
            for ident in lost:
                error = f"the render worker's second drawing process (pid {self.pid}) exited before answering"
                try:
                    send(ident, pickle.dumps((None, error), protocol=_PICKLE))
                except (OSError, ValueError):
                    return

        self._relay = threading.Thread(target=run, name="tbhooks-render-relay", daemon=True)
        self._relay.start()

    def close(self) -> None:
        """End the drawer (it sees the end of its pipe) and wait for its last answers to be relayed."""
        with self._lock:
            self._dead = True
        try:
            self._inbox.close()
        except OSError:
            pass
        if self._relay is not None:
            self._relay.join(timeout=5.0)
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _watch_parent(parent: int) -> None:
    """End the worker when the training process is gone, even in the middle of a drawing that never ends.

    (Between drawings, the end of stdin ends it already.)
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="tbhooks-render-watch", daemon=True).start()


# ---------------------------------------------------------------------------
# the parent side
# ---------------------------------------------------------------------------


class _Request:
    __slots__ = ("body", "ident", "report", "step", "tag", "walltime", "worker", "writer")

    def __init__(
        self,
        ident: int,
        body: bytes,
        report: Callable[..., Any],
        tag: str,
        step: int,
        writer: SummaryWriter | None,
    ) -> None:
        self.ident = ident
        self.body = body
        self.report = report  # what an error is reported against: the owning plugin's method when known
        self.tag = tag
        self.step = step
        self.writer = writer  # None for a warm-up: its image is dropped, its errors are not reported
        self.walltime = time.time()  # the event's time is when it was asked for, not when it was drawn
        self.worker: _Worker | None = None


class _TensorArgumentError(TypeError):
    """A torch tensor among a request's arguments (its message is shown as is)."""


class _RequestPickler(pickle.Pickler):
    """Refuses torch tensors: the worker would import torch (and a CUDA tensor would open a CUDA context there)."""

    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor):
            raise _TensorArgumentError(
                f"a torch.Tensor (device {obj.device}) among the arguments; pass numpy arrays "
                f"(tensor.detach().cpu().numpy()) so that the worker process need not import torch"
            )
        return NotImplemented


def _pickle_request(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], tag: str) -> bytes:
    where = f"render_image({tag!r}, ...)"
    if not callable(fn):
        raise TypeError(f"{where}: fn expects a function, got {type(fn).__name__}")
    name = getattr(fn, "__qualname__", "")
    if isinstance(fn, types.MethodType) or "<locals>" in name or "<lambda>" in name:
        raise TypeError(
            f"{where}: fn={name or fn!r} is not a module-level function; the worker process imports fn "
            f"by module and name, so define it at the top level of an importable module"
        )
    if getattr(fn, "__module__", None) == "__main__":
        raise TypeError(
            f"{where}: fn={name} is defined in the __main__ script, which the worker process does not run; "
            f"move it to an importable module"
        )
    buffer = io.BytesIO()
    try:
        _RequestPickler(buffer, protocol=_PICKLE).dump((fn, args, kwargs, tag))
    except _TensorArgumentError as exc:
        raise TypeError(f"{where}: {exc}") from None
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise TypeError(f"{where}: fn and its arguments must be picklable: {exc}") from None
    return buffer.getvalue()


def pipe_room(fd: int) -> int:
    """Bytes the pipe ``fd`` (either end) can take now without a write blocking; 0 where that cannot be
    known (not Linux, not a pipe)."""
    try:
        import fcntl
        import termios

        size = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        unread = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except (ImportError, AttributeError, OSError):
        return 0
    return size - unread


class _Worker:
    """One worker process with a sender and a reader thread.

    The sender starts the process (so the training thread never waits for a
    fork) and writes requests to its stdin (so the training thread never
    blocks on a full pipe); the reader writes each answer to the run's file
    writer as it arrives.

    A request is written by the thread that sends it instead when the sender
    has written everything before it, no one is writing, and the pipe has room
    for the whole message (so the write cannot block): waking the sender costs
    the training thread up to a switch interval (5 ms) waiting for the
    interpreter lock while it runs (seen in a plugin's evaluation hook).
    Requests reach the worker in the order they were sent either way.
    """

    def __init__(self, owner: RenderProcess) -> None:
        self.owner = owner
        self.process: subprocess.Popen[bytes] | None = None
        self.started = threading.Event()  # set once the process exists or failed to start
        self.finished = threading.Event()  # set once the worker closed its answers pipe (it exits)
        self.dead = False
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._writing = threading.Lock()  # held by whoever writes to the worker's stdin
        self._count = threading.Lock()  # guards _queued and _open, never held while writing
        self._queued = 0  # requests given to the sender and not yet written
        self._open = False  # the first message is written and the sender has not stopped
        self._reader: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._stopping = threading.Event()  # set by stop() (and once the worker is gone): the watchdog wakes
        self._stop_timeout = owner.stop_timeout  # what stop() is given replaces it
        self._sender = threading.Thread(target=self._send, name="tbhooks-render-send", daemon=True)
        self._sender.start()

    def send(self, request: _Request) -> None:
        if self._writing.acquire(blocking=False):
            try:
                with self._count:
                    direct = self._open and not self._queued
                stdin = self.process.stdin if self.process is not None else None
                if direct and stdin is not None and pipe_room(stdin.fileno()) >= _HEADER.size + len(request.body):
                    _write_message(stdin, request.ident, request.body)
                    return
            except (OSError, ValueError):
                pass  # the worker is gone: the request goes the sender's way, whose failure is handled
            finally:
                self._writing.release()
        with self._count:
            self._queued += 1
        self._queue.put(request)

    def _send(self) -> None:
        if hasattr(signal, "pthread_sigmask"):
            # Blocked in this thread only (Python handles signals in the main thread); the child
            # inherits the mask, so a Ctrl-C during its start-up waits until it ignores SIGINT.
            signal.pthread_sigmask(signal.SIG_BLOCK, _IGNORED_SIGNALS)
        try:
            self.process = subprocess.Popen(
                self.owner.command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, **_WORKER_ENV},
            )
        except OSError as exc:
            self.started.set()
            self.owner._start_failed(self, exc)
            return
        self.started.set()
        self._reader = threading.Thread(target=self._read, name="tbhooks-render-read", daemon=True)
        self._reader.start()
        # Started here, not by stop(): starting a thread waits until it runs, which took close
        # up to a millisecond where the cores were busy (the worker's own teardown, say).
        self._watchdog = threading.Thread(target=self._watch, name="tbhooks-render-stop", daemon=True)
        self._watchdog.start()
        stdin = self.process.stdin
        assert stdin is not None
        # pipe_room's first call imports fcntl and termios (about 1.5 ms, longer while training
        # holds the interpreter lock): here, not in the first direct write of a plugin's hook.
        pipe_room(stdin.fileno())
        try:
            first = (list(sys.path), list(self.owner.preload))
            with self._writing:
                _write_message(stdin, _PATH_ID, pickle.dumps(first, protocol=_PICKLE))
                with self._count:
                    self._open = True
            while True:
                item = self._queue.get()
                with self._writing:
                    if item is None:
                        with self._count:
                            self._open = False
                        _write_message(stdin, _PATH_ID, b"")
                        break
                    _write_message(stdin, item.ident, item.body)
                with self._count:
                    self._queued -= 1
        except (OSError, ValueError):
            pass  # the worker is gone: the reader sees the end of its stdout and fails what is pending
        finally:
            with self._count:
                self._open = False
            with self._writing:
                try:
                    stdin.close()
                except OSError:
                    pass

    def _read(self) -> None:
        process = self.process
        assert process is not None and process.stdout is not None
        with process.stdout:
            while True:
                message = _read_message(process.stdout)
                if message is None:
                    break
                self.owner._answered(*message)
        self.finished.set()
        self._stopping.set()  # ends the watchdog if no one asked the worker to stop
        status = process.wait()
        self.dead = True
        self._queue.put(None)  # ends the sender if it still waits
        self.owner._died(self, status)

    def _watch(self) -> None:
        """The watchdog: once the worker is asked to stop, kill it if it has not closed its answers pipe
        within the timeout (a drawing that never ends, a full pipe it no longer reads)."""
        self._stopping.wait()
        if not self.finished.wait(self._stop_timeout) and self.process is not None:
            self.process.kill()

    def stop(self, timeout: float) -> None:
        """Ask the worker to exit once its queue is done; the watchdog thread kills it when it has not
        closed its answers pipe within ``timeout`` seconds.

        Returns at once: the caller (:meth:`RenderProcess.close`) has drained
        every answer already, so nothing is left to wait for but the worker's
        own exit, an interpreter that imported matplotlib tearing down
        (several milliseconds).  The reader thread reaps the process; if the
        training process ends first, the worker sees the end of its stdin
        and exits by itself.
        """
        self._stop_timeout = timeout
        self._stopping.set()
        self._queue.put(None)


class RenderProcess:
    """The parent's side of the render worker: requests out, image events in.

    Created on a run's first :meth:`tbhooks.run.Run.render_image`; the worker
    starts with the first request.  Errors (``fn`` raised, the worker died)
    are collected in the same ``(fn, exception)`` form as the run's
    background-thread errors, and :meth:`take_errors` hands them to the core,
    which reports them on the training thread and disables the owning plugin.

    A worker that dies is restarted for the next request, at most
    ``max_starts`` times in a run; after that requests fail with an error
    (a function that crashes its process would crash the training process
    if it ran there).  When the worker cannot be started at all (``Popen``
    fails), drawing falls back to ``fallback``, the run's background thread,
    with one INFO line.
    """

    max_pending = 64
    """Requests in flight at most; a further :meth:`submit` waits (as ``run.submit`` does when its queue is full)."""
    max_starts = 3
    stop_timeout = 10.0
    """Seconds the worker has to exit once :meth:`close` asked it to, before it is killed."""

    def __init__(self, fallback: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], None]) -> None:
        self._fallback = fallback
        self._cond = threading.Condition()
        self._pending: dict[int, _Request] = {}
        # The worker draws two requests at a time (see _Drawer), so answers may come back out of
        # order; they are written in the order asked, which TensorBoard's image slider follows.
        self._order: collections.deque[int] = collections.deque()  # ids of images not yet written
        self._done: dict[int, tuple[bytes | None, BaseException | None]] = {}  # answered, waiting for their turn
        self._errors: list[tuple[Callable[..., Any], BaseException]] = []
        self._worker: _Worker | None = None
        self._starts = 0
        self._in_thread = False
        self._fallback_lock = threading.Lock()
        self._writing = threading.Lock()  # held by the reader thread writing images in order
        self._ids = itertools.count(1)
        self.preload: tuple[str, ...] = ()
        """Modules the worker imports as soon as it starts (set by :meth:`start`)."""

    def start(self, preload: Sequence[str] = ()) -> None:
        """Start the worker now, importing ``preload`` there, so its start-up overlaps with training
        instead of delaying the first image (and ``close``).  A no-op when one is running."""
        with self._cond:
            if self._worker is None and not self._in_thread and self._starts < self.max_starts:
                self.preload = tuple(preload)
                self._starts += 1
                self._worker = _Worker(self)

    @staticmethod
    def command() -> list[str]:
        """The worker's command line: this file run by the same interpreter, without importing ``tbhooks``,
        and the training process's pid."""
        bootstrap = "import runpy, sys; sys.argv[:2] = sys.argv[1:2]; runpy.run_path(sys.argv[0], run_name='__main__')"
        return [sys.executable, "-c", bootstrap, os.path.abspath(__file__), str(os.getpid())]

    @property
    def pid(self) -> int | None:
        """The process id of the current worker (``None`` before it started or after it failed to)."""
        worker = self._worker
        process = worker.process if worker is not None else None
        return process.pid if process is not None else None

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        tag: str,
        step: int,
        writer: SummaryWriter | None,
        owner: object | None = None,
    ) -> None:
        """Queue ``fn(*args, **kwargs)`` for the worker; its image is written as ``tag`` at ``step``.

        Raises ``TypeError`` at once when ``fn`` or its arguments cannot be
        sent (not a module-level function, not picklable, a torch tensor).
        ``owner`` is the object an error is reported against (the plugin
        that asked), as a method of it.  With ``writer=None`` it is a warm-up
        (see :meth:`tbhooks.run.Run.warm_up_render`): the worker runs it, the
        image is dropped and an error is not reported.
        """
        if not isinstance(tag, str):
            raise TypeError(f"render_image: tag expects a str, got {type(tag).__name__}")
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"render_image({tag!r}, ...): step expects an int, got {type(step).__name__}")
        body = _pickle_request(fn, args, kwargs, tag)
        report = types.MethodType(fn, owner) if owner is not None else fn
        request = _Request(next(self._ids), body, report, tag, step, writer)
        with self._cond:
            while len(self._pending) >= self.max_pending:
                self._cond.wait()
            worker = self._worker
            if not self._in_thread and (worker is None or worker.dead):
                if self._starts >= self.max_starts:
                    self._errors.append(
                        (
                            report,
                            RenderError(
                                f"{self._where(request)}: the render worker died {self._starts} times; "
                                f"no more images are drawn in this run"
                            ),
                        )
                    )
                    return
                self._starts += 1
                worker = self._worker = _Worker(self)
            if not self._in_thread:
                assert worker is not None
                request.worker = worker
                self._pending[request.ident] = request
                if writer is not None:
                    self._order.append(request.ident)
        if request.worker is None:
            with self._fallback_lock:
                self._fallback(self._render_here, (request,), {})
        else:
            request.worker.send(request)

    def take_errors(self) -> list[tuple[Callable[..., Any], BaseException]]:
        """The errors collected since the last call, as ``(fn, exception)`` pairs."""
        with self._cond:
            errors, self._errors = self._errors, []
        return errors

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every request is answered (or failed because its worker died); warm-ups are not
        waited for (their images are dropped anyway).

        Returns ``False`` when ``timeout`` seconds passed first.
        """
        with self._cond:
            return self._cond.wait_for(
                lambda: all(request.writer is None for request in self._pending.values()), timeout
            )

    def close(self) -> None:
        """Drain (every image is in the writer when it returns), then let the worker exit in its own time
        (killed after :attr:`stop_timeout` seconds).  Idempotent."""
        self.drain()
        with self._cond:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(self.stop_timeout)

    # -- called from the worker's threads -----------------------------------------

    def _where(self, request: _Request) -> str:
        return f"render_image({request.tag!r}, step={request.step})"

    def _answered(self, ident: int, body: bytes) -> None:
        with self._cond:
            request = self._pending.get(ident)
            if request is None or ident in self._done:
                return  # a second answer to a warm-up (both drawing processes draw those)
            if request.writer is None:  # a warm-up: nothing to write, nothing to report
                del self._pending[ident]
                self._cond.notify_all()
                return
        summary: bytes | None = None
        error: BaseException | None = None
        try:
            summary, text = pickle.loads(body)
            if text is not None:
                error = RenderError(f"{self._where(request)} failed in the render worker process:\n{text}")
        except Exception as exc:
            error = exc
        with self._cond:
            self._done[ident] = (summary, error)
        self._write_in_order()

    def _write_in_order(self) -> None:
        """Write the answered images whose turn has come, in the order they were asked for.

        Called by the reader threads; one at a time (the first to find the
        next image writes it and every answered one after it), so the
        writer's events keep that order.
        """
        with self._writing:
            while True:
                with self._cond:
                    if not self._order or self._order[0] not in self._done:
                        return
                    ident = self._order.popleft()
                    summary, error = self._done.pop(ident)
                    request = self._pending[ident]
                try:
                    if error is not None:
                        raise error
                    assert summary is not None
                    self._write(request, summary)
                except Exception as exc:
                    with self._cond:
                        self._errors.append((request.report, exc))
                finally:
                    # Removed only once written, so that a finished drain() means the event is in the writer.
                    with self._cond:
                        self._pending.pop(ident, None)
                        self._cond.notify_all()

    def _died(self, worker: _Worker, status: int) -> None:
        with self._cond:
            lost = [r for r in self._pending.values() if r.worker is worker and r.ident not in self._done]
            for request in lost:
                if request.writer is None:
                    del self._pending[request.ident]  # a warm-up
                    continue
                self._done[request.ident] = (
                    None,
                    RenderError(
                        f"{self._where(request)}: the render worker process exited (status {status}) before answering"
                    ),
                )
            self._cond.notify_all()
        self._write_in_order()

    def _start_failed(self, worker: _Worker, exc: OSError) -> None:
        # The fallback lock keeps the order: requests made meanwhile queue behind the moved ones.
        with self._fallback_lock:
            with self._cond:
                self._in_thread = True
                worker.dead = True
                moved = sorted((r for r in self._pending.values() if r.worker is worker), key=lambda r: r.ident)
            log.info("tbhooks: the render worker process could not be started (%s); images are drawn on a thread", exc)
            for request in moved:
                request.worker = None
                self._fallback(self._render_here, (request,), {})
            with self._cond:
                # Removed once queued, so that drain() then the background thread's drain wait for them.
                for request in moved:
                    del self._pending[request.ident]
                gone = {request.ident for request in moved}
                self._order = collections.deque(ident for ident in self._order if ident not in gone)
                self._cond.notify_all()

    # -- the fallback: draw on the run's background thread ----------------------------

    def _render_here(self, request: _Request) -> None:
        if request.writer is None:
            return  # a warm-up is for the worker's caches; this process has no worker
        try:
            fn, args, kwargs, tag = pickle.loads(request.body)
            self._write(request, image_summary(fn(*args, **kwargs), tag))
        except Exception as exc:
            with self._cond:
                self._errors.append((request.report, exc))

    @staticmethod
    def _write(request: _Request, summary: bytes) -> None:
        # The worker's serialized Summary goes into the event as it is: parsing and
        # serializing it again would copy the PNG twice, holding the GIL.
        from tbhooks._records import summary_event, write_event

        if request.writer is not None:
            write_event(request.writer, summary_event(summary, request.step, request.walltime))


def calling_object(frame: types.FrameType | None, skip: object, depth: int = 3) -> object | None:
    """The nearest ``self`` among ``frame`` and its ``depth - 1`` callers, other than ``skip``.

    :meth:`tbhooks.run.Run.render_image` uses it to find the plugin whose
    method asked for a drawing, so that the drawing's errors are reported
    against (and disable) that plugin; the function itself is module-level
    and so carries no owner.
    """
    for _ in range(depth):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if candidate is not None and candidate is not skip:
            return candidate
        frame = frame.f_back
    return None


if __name__ == "__main__":
    status = worker_main()
    sys.stderr.flush()
    # Every answer is flushed already; skipping the interpreter's teardown (torch and matplotlib, when
    # the drawing functions imported them) lets close() return in milliseconds instead of seconds.
    os._exit(status)
