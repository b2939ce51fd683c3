"""``run.render_image``: figures drawn in a worker process, written by the run's writer, read back.

Every test uses real processes and TensorBoard's own reader (``read_events``).  The drawing
functions live in ``tests/_render_helpers.py`` (the worker imports them by module and name);
the pixels each test expects are worked out here.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import _render_helpers as helpers
import numpy as np
import pytest
import torch
from _support import classification_data, loader, mlp
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

import tbhooks
from tbhooks import PluginFaultWarning, render
from tbhooks.background import Background
from tbhooks.manager import BUILTIN_PLUGINS
from tbhooks.render import Renderer, RenderError
from tbhooks.testing import read_events

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")

QUIET = {"disable": list(BUILTIN_PLUGINS), "autoload": False}
WAIT = 30.0  # seconds a condition may take before the test fails instead of hanging


class Owner:
    """A plugin that draws nothing by itself: the owner of the test's render requests."""

    def __init__(self, name: str = "owner") -> None:
        self.name = name

    @tbhooks.hookimpl
    def on_fit_start(self) -> None:
        pass


def rgb(colour: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` as three ints."""
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def decode(event) -> np.ndarray:
    """The RGBA pixels of an image event, decoded by PIL; its size must be the event's."""
    picture = Image.open(io.BytesIO(event.encoded_image_string))
    assert picture.format == "PNG"
    assert picture.size == (event.width, event.height)
    return np.asarray(picture.convert("RGBA"))


def colour_of(event) -> tuple[int, ...]:
    """The one colour of a solid image event (``RGBA``)."""
    pixels = decode(event).reshape(-1, 4)
    assert (pixels == pixels[0]).all(), "the image is not of one colour"
    return tuple(int(v) for v in pixels[0])


def state(pid: int) -> str | None:
    """Process ``pid``'s state letter from ``/proc`` (``"Z"`` for a zombie), ``None`` when there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid: int) -> bool:
    return state(pid) not in (None, "Z")


def ended(pid: int, limit: float = WAIT) -> bool:
    """Whether process ``pid`` is gone (or a zombie) within ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def render_workers() -> set[int]:
    """Live child processes of this one that run the render worker."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        status, parent = stat.rpartition(")")[2].split()[:2]
        if int(parent) == os.getpid() and status != "Z" and render.__file__.encode() in command:
            found.add(int(entry.name))
    return found


class Direct:
    """A Renderer of its own, with a real writer and a real background thread."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.writer = SummaryWriter(str(logdir))
        self.background = Background()
        self.renderer = Renderer(self.background, self.writer)

    def drain(self) -> list[tuple[object, BaseException]]:
        """Wait for every request; the ``(owner, error)`` of those that failed."""
        self.background.drain()
        return self.background.take_errors()

    def images(self, tag: str) -> list:
        """The image events of ``tag`` written so far, as TensorBoard reads them."""
        self.writer.flush()
        return read_events(self.logdir).images.get(tag, [])

    def close(self) -> None:
        self.background.stop()
        self.renderer.close()
        self.writer.close()


@pytest.fixture
def direct(tmp_path):
    direct = Direct(tmp_path / "direct")
    yield direct
    direct.close()


# ---------------------------------------------------------------------------
# what comes back
# ---------------------------------------------------------------------------


def test_a_figure_comes_back_as_a_png_image_event_with_its_tag_step_size_and_pixels(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (7, 13, 3), dtype=np.uint8)
    owner = Owner()
    with tbhooks.attach(mlp(), logdir=tmp_path, plugins=[owner], **QUIET) as hooks:
        hooks.run.render_image(owner, "solid", 3, helpers.solid, "#3366cc", width=30, height=20)
        hooks.run.render_image(owner, "pixels/random", 5, helpers.pixels, array)
    assert hooks.faults == {}
    images = read_events(tmp_path).images
    assert {tag: [(e.step, e.width, e.height) for e in events] for tag, events in images.items()} == {
        "solid": [(3, 30, 20)],
        "pixels/random": [(5, 13, 7)],
    }
    assert colour_of(images["solid"][0]) == (0x33, 0x66, 0xCC, 255)
    drawn = decode(images["pixels/random"][0])
    np.testing.assert_array_equal(drawn[:, :, :3], array)  # every pixel, top row first
    assert (drawn[:, :, 3] == 255).all()


def test_a_users_matplotlibrc_does_not_change_the_image(tmp_path, monkeypatch):
    # The worker reads the user's matplotlibrc like any matplotlib program; its savefig settings must
    # not make the PNG differ from the figure (nor from the size the image event declares).
    rc = tmp_path / "matplotlibrc"
    rc.write_text("savefig.dpi: 50\nsavefig.bbox: tight\nsavefig.transparent: True\nsavefig.facecolor: red\n")
    monkeypatch.setenv("MATPLOTLIBRC", str(rc))
    owner = Owner()
    with tbhooks.attach(mlp(), logdir=tmp_path / "run", plugins=[owner], **QUIET) as hooks:
        hooks.run.render_image(owner, "solid", 1, helpers.solid, "#3366cc", width=30, height=20)
    (event,) = read_events(tmp_path / "run").images["solid"]
    assert (event.width, event.height) == (30, 20)
    assert colour_of(event) == (0x33, 0x66, 0xCC, 255)


def test_drawing_happens_in_a_worker_process_of_its_own_session_without_torch(tmp_path):
    owner = Owner()
    with tbhooks.attach(mlp(), logdir=tmp_path / "run", plugins=[owner], **QUIET) as hooks:
        hooks.run.render_image(owner, "who", 1, helpers.report, str(tmp_path / "facts"), "#102030")
    facts = helpers.wait_for_json(tmp_path / "facts")
    assert "torch" in sys.modules  # this process has it; the worker must not pay for it
    assert facts["pid"] != os.getpid() and facts["ppid"] == os.getpid()
    assert facts["sid"] == facts["pid"]  # a session of its own: a terminal's Ctrl-C does not reach it
    assert facts["torch"] is False and facts["tbhooks"] is False
    assert colour_of(read_events(tmp_path / "run").images["who"][0]) == (0x10, 0x20, 0x30, 255)


def test_start_render_worker_preloads_modules_and_calls_their_warm_up(tmp_path, monkeypatch):
    monkeypatch.setenv(helpers.WARM_UP_ENV, str(tmp_path / "warmed"))
    owner = Owner()
    with tbhooks.attach(mlp(), logdir=tmp_path / "run", plugins=[owner], **QUIET) as hooks:
        # A module that cannot be imported is skipped: the requests report what is wrong, if anything.
        hooks.run.start_render_worker("no_such_module_for_tbhooks_tests", "_render_helpers")
        warmed = helpers.wait_for_json(tmp_path / "warmed")  # before any request
        hooks.run.render_image(owner, "who", 1, helpers.report, str(tmp_path / "facts"))
    assert hooks.faults == {}
    assert warmed["pid"] != os.getpid() and warmed["torch"] is False
    assert helpers.wait_for_json(tmp_path / "facts")["pid"] == warmed["pid"]  # the same worker drew
    assert [e.step for e in read_events(tmp_path / "run").images["who"]] == [1]


def test_many_renders_keep_their_order_and_steps(direct):
    steps = [3 * index + 1 for index in range(40)]
    for index, step in enumerate(steps):
        colour = f"#{index:02x}{255 - index:02x}80"
        direct.renderer.submit("owner", "order", step, helpers.solid, (colour,), {"width": 4})
    assert direct.drain() == []
    events = direct.images("order")
    assert [e.step for e in events] == steps
    assert [colour_of(e) for e in events] == [(index, 255 - index, 0x80, 255) for index in range(40)]


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


class Drawer:
    """Draws every step; its drawing at step 2 raises in the worker."""

    name = "drawer"

    @tbhooks.hookimpl
    def on_batch_end(self, run, step):
        run.render_image(self, "drawer/ok", step, helpers.solid, f"#{step:02x}0000")
        if step == 2:
            run.render_image(self, "drawer/broken", step, helpers.fail, "disk on fire")


class Painter:
    """Draws every step, with a colour that tells the step."""

    name = "painter"

    @tbhooks.hookimpl
    def on_batch_end(self, run, step):
        run.render_image(self, "painter/steps", step, helpers.solid, f"#00{10 * step:02x}00")


def test_an_error_in_the_drawing_function_disables_its_plugin_and_the_run_goes_on(tmp_path):
    model = mlp()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        plugins=[Drawer(), Painter()],
        disable=[name for name in BUILTIN_PLUGINS if name != "scalars"],  # scalars: the epoch loss
        autoload=False,
        device="cpu",
        progress=False,
    )
    with pytest.warns(PluginFaultWarning) as caught:
        trainer.fit(loader(classification_data(n=32)), epochs=2)  # 4 steps per epoch
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "plugin 'drawer' raised in background task" in text
    # The worker's traceback comes along: the function, the exception, its message.
    assert "RenderError" in text and "in fail" in text and "OSError: disk on fire" in text
    assert "render_image('drawer/broken', step=2)" in text  # which figure
    assert set(trainer.hooks.faults) == {"drawer"}

    events = read_events(tmp_path)
    assert events.steps("train/epoch_loss") == [4, 8]  # training went on
    assert "drawer/broken" not in events.images
    painted = events.images["painter/steps"]  # the other plugin drew every step
    assert [(e.step, colour_of(e)) for e in painted] == [(s, (0, 10 * s, 0, 255)) for s in range(1, 9)]
    # The faulty plugin drew until it was unregistered (when its error came back, at a flush or at close).
    drawn = [(e.step, colour_of(e)) for e in events.images["drawer/ok"]]
    assert drawn == [(s, (s, 0, 0, 255)) for s in range(1, len(drawn) + 1)] and len(drawn) >= 2


def test_a_drawing_function_that_returns_no_figure_is_an_error_of_its_owner(direct):
    direct.renderer.submit("owner", "bad", 1, helpers.not_a_figure, (), {})
    direct.renderer.submit("other", "good", 2, helpers.solid, ("#000000",), {})
    ((owner, error),) = direct.drain()
    assert owner == "owner" and isinstance(error, RenderError)
    assert "returned a str; expected a matplotlib Figure" in str(error)
    assert direct.images("bad") == [] and [e.step for e in direct.images("good")] == [2]


def test_what_cannot_be_sent_is_a_type_error_at_the_call_and_starts_no_worker(direct, tmp_path):

    def nested():
        pass

    def script_function():
        pass

    script_function.__module__ = "__main__"
    script_function.__qualname__ = "script_function"
    unsendable = [
        ((lambda: None), (), "module-level function"),
        (nested, (), "module-level function"),
        (script_function, (), "module-level function"),
        (helpers.solid, (torch.ones(2),), r"torch\.Tensor.*numpy"),
        (helpers.solid, (torch.float32,), r"torch\.dtype"),
        (helpers.solid, (threading.Lock(),), "lock"),
        (helpers.solid, ((n for n in range(3)),), "generator"),
        (helpers.solid, ("#000000",), "cannot send", {"colour": lambda: None}),
    ]
    for fn, args, words, *kwargs in unsendable:
        with pytest.raises(TypeError, match=words):
            direct.renderer.submit("owner", "t", 0, fn, args, kwargs[0] if kwargs else {})
    owner = Owner()
    with tbhooks.attach(mlp(), logdir=tmp_path / "run", plugins=[owner], **QUIET) as hooks:
        with pytest.raises(TypeError, match="numpy"):
            hooks.run.render_image(owner, "t", 0, helpers.solid, torch.zeros(1))
        assert render_workers() == set()
    assert direct.renderer.pid is None and render_workers() == set()
    assert direct.drain() == [] and hooks.faults == {}
    assert not read_events(tmp_path / "run").images


def test_a_killed_worker_is_an_error_report_and_the_next_render_restarts_it(direct, tmp_path):
    renderer, started = direct.renderer, tmp_path / "started"
    renderer.submit("owner", "t", 1, helpers.gated, (str(tmp_path / "never"), str(started)), {})
    first = helpers.wait_for_json(started)["pid"]
    assert renderer.pid == first
    os.kill(first, signal.SIGKILL)  # in the middle of the drawing
    ((owner, error),) = direct.drain()
    assert owner == "owner" and isinstance(error, RenderError)
    assert f"exited (status {-signal.SIGKILL})" in str(error)
    assert state(first) is None  # reaped

    renderer.submit("owner", "t", 2, helpers.solid, ("#445566",), {})
    assert direct.drain() == []
    assert renderer.pid not in (None, first) and render_workers() == {renderer.pid}
    assert [(e.step, colour_of(e)) for e in direct.images("t")] == [(2, (0x44, 0x55, 0x66, 255))]


def test_a_drawing_that_hangs_past_the_timeout_is_killed_and_reported(direct, tmp_path):
    renderer = direct.renderer
    renderer.submit("owner", "t", 1, helpers.solid, ("#010203",), {})
    assert direct.drain() == []  # the worker is up: the timeout below is the drawing's alone
    first = renderer.pid
    renderer.timeout = 1.0
    renderer.submit("hanger", "t", 2, helpers.gated, (str(tmp_path / "never"), str(tmp_path / "started")), {})
    ((owner, error),) = direct.drain()
    assert owner == "hanger" and isinstance(error, RenderError)
    assert "did not answer within 1 s and was killed" in str(error)
    assert helpers.wait_for_json(tmp_path / "started")["pid"] == first  # it was drawing, not starting
    assert state(first) is None  # killed and reaped

    del renderer.timeout  # the class default again: the new worker's start is not a hang
    renderer.submit("owner", "t", 3, helpers.solid, ("#040506",), {})
    assert direct.drain() == []
    assert renderer.pid not in (None, first)
    assert [e.step for e in direct.images("t")] == [1, 3]


# ---------------------------------------------------------------------------
# the worker's lifetime
# ---------------------------------------------------------------------------


def test_close_waits_for_pending_renders_and_the_worker_has_ended_after_it(tmp_path):
    owner = Owner()
    colours = ["#100000", "#200000", "#300000"]
    with tbhooks.attach(mlp(), logdir=tmp_path / "run", plugins=[owner], **QUIET) as hooks:
        hooks.run.render_image(owner, "who", 0, helpers.report, str(tmp_path / "facts"))
        for step, colour in enumerate(colours, start=1):
            hooks.run.render_image(owner, "slow", step, helpers.slow, 0.2, colour)
    # Leaving the block closed the run: every image is on disk and the worker is gone (reaped).
    worker = helpers.wait_for_json(tmp_path / "facts")["pid"]
    assert state(worker) is None and render_workers() == set()
    slow = read_events(tmp_path / "run").images["slow"]
    assert [(e.step, colour_of(e)) for e in slow] == [(s, (*rgb(c), 255)) for s, c in enumerate(colours, 1)]


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="forks a DataLoader worker")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_close_ends_the_worker_while_forked_data_loader_workers_hold_its_connection(direct, tmp_path):
    # DataLoader workers forked after the render worker started hold a copy of its connection, so
    # the worker sees no end of it at close: close ends it all the same, at once.
    direct.renderer.start()
    loader = DataLoader(
        TensorDataset(torch.zeros(4, 2)), num_workers=1, persistent_workers=True, multiprocessing_context="fork"
    )
    batches = iter(loader)
    try:
        next(batches)  # its worker process is forked now, and stays for the loader's life
        direct.renderer.submit("owner", "who", 1, helpers.report, (str(tmp_path / "facts"),), {})
        assert direct.drain() == []
        worker = helpers.wait_for_json(tmp_path / "facts")["pid"]
        started = time.monotonic()
        direct.renderer.close()
        took = time.monotonic() - started
    finally:
        del batches
    assert took < 5, f"close took {took:.1f} s"
    assert state(worker) is None and direct.renderer.pid is None


def test_other_ranks_draw_nothing_and_start_no_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    owner = Owner()
    with tbhooks.attach(mlp(), logdir=tmp_path / "rank1", plugins=[owner], **QUIET) as hooks:
        assert not hooks.run.is_writer
        hooks.run.start_render_worker("_render_helpers")
        hooks.run.render_image(owner, "t", 1, helpers.report, str(tmp_path / "facts"))
        hooks.run.render_image(owner, "t", 2, helpers.solid, torch.ones(1))  # not even pickled
        assert render_workers() == set()
    assert hooks.faults == {}
    assert not (tmp_path / "facts").exists() and not (tmp_path / "rank1").exists()


def test_figures_are_drawn_on_the_background_thread_where_no_worker_process_can_start(tmp_path, monkeypatch):
    def no_processes(*args, **kwargs):
        raise OSError("no processes here")

    monkeypatch.setattr(render.subprocess, "Popen", no_processes)
    owner = Owner()
    with pytest.warns(PluginFaultWarning) as caught:
        with tbhooks.attach(mlp(), logdir=tmp_path / "run", plugins=[owner], **QUIET) as hooks:
            hooks.run.start_render_worker("_render_helpers")
            hooks.run.render_image(owner, "who", 1, helpers.report, str(tmp_path / "facts"), "#0a0b0c")
            hooks.run.render_image(owner, "broken", 2, helpers.fail, "no disk")
    facts = helpers.wait_for_json(tmp_path / "facts")
    assert facts["pid"] == os.getpid()  # drawn in this process
    assert len(caught) == 1 and "plugin 'owner' raised" in str(caught[0].message)
    assert "OSError: no disk" in str(caught[0].message)
    images = read_events(tmp_path / "run").images
    assert list(images) == ["who"] and colour_of(images["who"][0]) == (10, 11, 12, 255)


def start_child(workdir: Path) -> subprocess.Popen[str]:
    """``_render_helpers.py`` run as a training script, in a process group of its own like a job in a terminal."""
    return subprocess.Popen(
        [sys.executable, helpers.__file__, str(workdir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )


def stop(child: subprocess.Popen[str], pids: list[int]) -> None:
    """Clean up after a failed test: end the child and any worker of it still running."""
    if child.poll() is None:
        child.kill()
    for pid in pids:  # first: the workers hold the child's stdout and stderr open
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    child.communicate()


def test_ctrl_c_ends_the_run_with_its_figures_and_does_not_reach_the_worker(tmp_path):
    # Ctrl-C in a terminal sends SIGINT to the foreground process group: the training process's. The
    # worker, in a session of its own, goes on drawing, and the run's close still gets the figure.
    child = start_child(tmp_path)
    pids: list[int] = []
    try:
        pids = [int(pid) for pid in child.stdout.readline().split()]
        drawing, idle = pids
        assert alive(drawing) and alive(idle) and os.getpgid(drawing) != child.pid != os.getpgid(idle)
        os.killpg(child.pid, signal.SIGINT)
        assert child.stdout.readline().split() == ["interrupted", "KeyboardInterrupt"]
        (tmp_path / "gate").touch()  # the drawing ends now (it waited through the signal)
        _, stderr = child.communicate(timeout=WAIT)
    finally:
        stop(child, pids)
    assert "KeyboardInterrupt" in stderr and "PluginFaultWarning" not in stderr, stderr
    (image,) = read_events(tmp_path / "drawing").images["gated"]
    assert image.step == 1 and colour_of(image) == (0, 255, 0, 255)
    assert ended(drawing) and ended(idle)


def test_a_training_process_killed_with_sigkill_leaves_no_worker_behind(tmp_path):
    # Two workers: one idle, one in a drawing that waits for a gate nobody opens.
    child = start_child(tmp_path)
    pids: list[int] = []
    try:
        pids = [int(pid) for pid in child.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        child.kill()  # no close, no exception: the process is gone
        child.wait(WAIT)
        assert [pid for pid in pids if not ended(pid, limit=10.0)] == []
    finally:
        stop(child, pids)
