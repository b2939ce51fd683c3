"""``run.render_image``: images drawn in a worker process, written by the run's writer, read back.

The drawing functions live in ``tests/_render_helpers.py`` (the worker imports them by name);
every expected pixel is computed here, independently of them.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _render_helpers as helpers
import numpy as np
import pytest
import torch
from _support import classification_data, loader, mlp
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import image as torch_image_summary

import tbhooks
from tbhooks import PluginFaultWarning, render_worker
from tbhooks.manager import BUILTIN_PLUGINS
from tbhooks.render_worker import RenderError, RenderProcess, encode_png, image_summary
from tbhooks.run import _Background
from tbhooks.testing import read_events

QUIET = [name for name in BUILTIN_PLUGINS if name != "scalars"]
WAIT = 60.0  # seconds a drain may take before the test fails instead of hanging


def expected_gradient(height: int, width: int, channels: int, offset: int) -> np.ndarray:
    pixels = np.zeros((height, width, max(channels, 1)), dtype=np.uint8)
    for y in range(height):
        for x in range(width):
            for c in range(max(channels, 1)):
                pixels[y, x, c] = (offset + 7 * y + 3 * x + 50 * c) % 256
    return pixels[:, :, 0] if channels == 0 else pixels


def decode(event, mode: str = "RGB") -> np.ndarray:
    picture = Image.open(io.BytesIO(event.encoded_image_string))
    assert picture.mode == mode
    assert (picture.width, picture.height) == (event.width, event.height)
    return np.asarray(picture)


def ended(pid: int) -> bool:
    """Whether process ``pid`` ends within WAIT seconds (gone, or a zombie waiting for its new parent to reap it)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rpartition(")")[2].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def direct(tmp_path):
    """A RenderProcess on its own, with a real writer and a real background thread as fallback."""
    writer = SummaryWriter(str(tmp_path / "direct"))
    background = _Background()
    renderer = RenderProcess(fallback=background.submit)
    yield renderer, writer, tmp_path / "direct"
    renderer.close()
    background.drain()
    background.stop()
    writer.close()


def test_image_comes_back_as_the_event_add_image_writes(tmp_path):
    with tbhooks.attach(mlp(), logdir=tmp_path, disable=BUILTIN_PLUGINS, autoload=False) as hooks:
        run = hooks.run
        run.render_image("rgb", 3, helpers.gradient, 5, 7, 3, 10)
        run.render_image("rgba", 4, helpers.gradient, 6, 4, 4, offset=20)
        run.render_image("grey", 5, helpers.gradient, 3, 2, 0, 30)
        run.render_image("noisy", 6, helpers.noisy, 77)  # prints to stdout in the worker
    images = read_events(tmp_path).images
    assert {tag: [e.step for e in events] for tag, events in images.items()} == {
        "rgb": [3],
        "rgba": [4],
        "grey": [5],
        "noisy": [6],
    }
    np.testing.assert_array_equal(decode(images["rgb"][0]), expected_gradient(5, 7, 3, 10))
    np.testing.assert_array_equal(decode(images["rgba"][0], "RGBA"), expected_gradient(6, 4, 4, 20))
    grey = expected_gradient(3, 2, 0, 30)
    np.testing.assert_array_equal(decode(images["grey"][0]), np.stack([grey] * 3, axis=2))
    np.testing.assert_array_equal(decode(images["noisy"][0]), np.full((2, 2, 3), 77, dtype=np.uint8))


@pytest.mark.parametrize(("channels", "dataformats"), [(3, "HWC"), (4, "HWC"), (1, "HWC"), (0, "HW")])
def test_summary_is_what_torch_add_image_builds_but_for_the_png_compression(channels, dataformats):
    pixels = expected_gradient(4, 6, channels, 5)
    (ours,) = Summary.FromString(image_summary(pixels, "tag")).value
    (theirs,) = torch_image_summary("tag", pixels, dataformats=dataformats).value
    assert ours.tag == theirs.tag
    for field in ("height", "width", "colorspace"):
        assert getattr(ours.image, field) == getattr(theirs.image, field)
    mode = "RGBA" if channels == 4 else "RGB"
    np.testing.assert_array_equal(decode(ours.image, mode), decode(theirs.image, mode))


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize(("height", "width"), [(1, 1), (7, 13), (579, 571)])
def test_encode_png_round_trips_through_pil(channels, height, width):
    # tbhooks writes the PNG itself (no row filter, zlib level 1); PIL's decoder checks
    # every chunk's CRC and the zlib stream, and must give back the exact pixels.
    rng = np.random.default_rng(height * width + channels)
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    pixels[: height // 2] = 255  # a flat area, as figures have
    flipped = pixels[:, ::-1]  # not C-contiguous
    for array in (pixels, flipped):
        data = encode_png(array)
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            assert image.mode == ("RGB" if channels == 3 else "RGBA")
            np.testing.assert_array_equal(np.asarray(image), array)


def test_drawn_in_another_process_that_does_not_import_torch(direct):
    renderer, writer, logdir = direct
    renderer.submit(helpers.pid_image, (), {}, tag="pid", step=1, writer=writer)
    renderer.submit(helpers.torch_loaded, (), {}, tag="torch", step=1, writer=writer)
    assert renderer.drain(WAIT)
    worker = renderer.pid
    writer.flush()
    images = read_events(logdir).images
    pid, parent = ((int(r) << 16) | (int(g) << 8) | int(b) for r, g, b in decode(images["pid"][0])[:, 0])
    # The worker drew it, or its second drawing process (a fork of it).
    assert worker & 0xFFFFFF in (pid, parent)
    assert worker != os.getpid() and pid != os.getpid() & 0xFFFFFF
    assert "torch" in __import__("sys").modules  # this process has it; the worker does not
    assert decode(images["torch"][0])[0, 0, 0] == 0
    assert renderer.take_errors() == []


class Drawer:
    """Draws a good image every step, and one whose function raises at step 2."""

    name = "drawer"

    @tbhooks.hookimpl
    def on_batch_end(self, run, step):
        run.render_image("drawer/ok", step, helpers.flat, step)
        if step == 2:
            run.render_image("drawer/broken", step, helpers.fail, "disk on fire")


class Painter:
    name = "painter"

    @tbhooks.hookimpl
    def on_batch_end(self, run, step):
        run.render_image("painter/steps", step, helpers.flat, 10 * step)


def test_error_in_the_drawing_function_disables_its_plugin_and_the_run_goes_on(tmp_path):
    model = mlp()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        plugins=[Drawer(), Painter()],
        disable=QUIET,
        autoload=False,
        device="cpu",
        progress=False,
    )
    with pytest.warns(PluginFaultWarning) as caught:
        trainer.fit(loader(classification_data(n=32)), epochs=2)  # 4 steps per epoch
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "plugin 'drawer' raised in background task" in text
    # The worker's own traceback comes along: the function, the exception, its message.
    assert "RenderError" in text and "in fail" in text and "OSError: disk on fire" in text
    assert "'drawer/broken', step=2" in text
    assert set(trainer.hooks.faults) == {"drawer"}

    events = read_events(tmp_path)
    assert events.steps("train/epoch_loss") == [4, 8]
    assert "drawer/broken" not in events.images
    # The other plugin drew every step; the faulty one every step until it was disabled (when the
    # error came back: at an epoch's flush if the worker had answered by then, else at close).
    painted = events.images["painter/steps"]
    assert [e.step for e in painted] == list(range(1, 9))
    assert [int(decode(e)[0, 0, 0]) for e in painted] == [10 * s for s in range(1, 9)]
    drawn = [e.step for e in events.images["drawer/ok"]]
    assert drawn == list(range(1, len(drawn) + 1)) and len(drawn) >= 2


def test_what_cannot_be_sent_is_refused_at_once_and_no_worker_starts(direct):
    renderer, writer, _ = direct

    def local() -> None:
        pass

    def main_script_function() -> None:
        pass

    main_script_function.__module__ = "__main__"
    main_script_function.__qualname__ = "main_script_function"
    cases = [
        ((lambda: None), (), "not a module-level function"),
        (local, (), "not a module-level function"),
        (main_script_function, (), "defined in the __main__ script"),
        (Drawer().on_batch_end, (), "not a module-level function"),
        (helpers.flat, (torch.ones(2),), r"torch\.Tensor \(device cpu\).*numpy"),
        (helpers.flat, (__import__("threading").Lock(),), "must be picklable"),
    ]
    for fn, args, words in cases:
        with pytest.raises(TypeError, match=words):
            renderer.submit(fn, args, {}, tag="t", step=0, writer=writer)
    with pytest.raises(TypeError, match="tag expects a str"):
        renderer.submit(helpers.flat, (1,), {}, tag=3, step=0, writer=writer)
    with pytest.raises(TypeError, match="step expects an int"):
        renderer.submit(helpers.flat, (1,), {}, tag="t", step=1.5, writer=writer)
    assert renderer.pid is None


def test_bad_return_values_are_errors_with_the_expected_type(direct):
    renderer, writer, _ = direct
    renderer.submit(helpers.floats, (), {}, tag="floats", step=0, writer=writer)
    renderer.submit(helpers.flat, (9,), {}, tag="fine", step=1, writer=writer)
    assert renderer.drain(WAIT)
    ((fn, error),) = renderer.take_errors()
    assert fn is helpers.floats
    assert isinstance(error, RenderError) and "float32 array; expected uint8" in str(error)


def test_close_waits_for_pending_renders_and_ends_the_worker(tmp_path):
    with tbhooks.attach(mlp(), logdir=tmp_path, disable=BUILTIN_PLUGINS, autoload=False) as hooks:
        for step in (1, 2, 3):
            hooks.run.render_image("slow", step, helpers.flat, 40 * step, pause=0.3)
        worker = hooks.run._render._worker
    # Leaving the block closed the run: every image is on disk; the worker then ends by itself
    # (status 0: it was asked to stop, not killed) without close waiting for it; the reader thread reaps it.
    slow = read_events(tmp_path).images["slow"]
    assert [e.step for e in slow] == [1, 2, 3]
    assert [int(decode(e)[0, 0, 0]) for e in slow] == [40, 80, 120]
    assert worker.finished.wait(WAIT)
    worker._reader.join(WAIT)
    assert worker.process.returncode == 0


def test_close_does_not_wait_for_the_worker_to_exit_and_one_that_does_not_is_killed(direct, monkeypatch):
    renderer, _, _ = direct
    monkeypatch.setattr(renderer, "stop_timeout", 2.0)
    renderer.start(["_render_hang"])  # its warm-up sleeps: the worker never reads the request to exit
    worker = renderer._worker
    assert worker.started.wait(WAIT)
    renderer.close()
    # Nothing was pending, so close returned at once, not after the worker's exit.
    assert worker.process.poll() is None
    # After stop_timeout the watchdog kills it; the reader thread reaps it.
    assert worker.finished.wait(WAIT)
    worker._reader.join(WAIT)
    assert worker.process.returncode == -signal.SIGKILL


def test_a_warm_up_runs_in_the_worker_and_writes_and_reports_nothing(tmp_path):
    marker = tmp_path / "warmed"
    with tbhooks.attach(mlp(), logdir=tmp_path / "run", disable=BUILTIN_PLUGINS, autoload=False) as hooks:
        hooks.run.warm_up_render(helpers.mark, str(marker))
        hooks.run.warm_up_render(helpers.fail, "a warm-up that fails")
        hooks.run.render_image("real", 1, helpers.flat, 50)
        assert hooks.run.drain() == []  # the failed warm-up is not an error of anyone's
        worker = hooks.run._render.pid
    # Both drawing processes warm up: the worker (before it drew "real", which drain waited for) and
    # its fork, whose parent is the worker (close does not wait for that one: it may not be done yet).
    drawn = {tuple(int(n) for n in path.read_text().split()) for path in tmp_path.glob("warmed.*")}
    assert worker != os.getpid()
    assert (worker, os.getpid()) in drawn
    assert all(parent == worker for _, parent in drawn - {(worker, os.getpid())})
    assert list(read_events(tmp_path / "run").images) == ["real"]


def test_close_does_not_wait_for_warm_ups(direct, monkeypatch):
    renderer, _, _ = direct
    monkeypatch.setattr(renderer, "stop_timeout", 2.0)
    renderer.submit(helpers.flat, (7,), {"pause": 600}, tag="warm-up", step=0, writer=None)
    worker = renderer._worker
    assert renderer.drain(WAIT)  # at once: only a warm-up is pending
    renderer.close()
    assert worker.started.wait(WAIT)
    assert worker.process.poll() is None  # still in the warm-up's drawing
    # The worker never gets to the request to exit: the watchdog kills it.
    assert worker.finished.wait(WAIT)
    worker._reader.join(WAIT)
    assert worker.process.returncode == -signal.SIGKILL


def test_a_killed_worker_is_an_error_report_not_a_hang_and_the_next_render_restarts_it(direct):
    renderer, writer, logdir = direct
    renderer.submit(helpers.flat, (1,), {}, tag="t", step=1, writer=writer)
    assert renderer.drain(WAIT)
    first = renderer.pid
    renderer.submit(helpers.flat, (2,), {"pause": 30.0}, tag="t", step=2, writer=writer)
    os.kill(first, signal.SIGKILL)
    assert renderer.drain(WAIT)
    ((fn, error),) = renderer.take_errors()
    assert fn is helpers.flat
    assert isinstance(error, RenderError)
    assert "render_image('t', step=2)" in str(error) and f"exited (status {-signal.SIGKILL})" in str(error)

    renderer.submit(helpers.flat, (3,), {}, tag="t", step=3, writer=writer)
    assert renderer.drain(WAIT)
    assert renderer.pid not in (None, first)
    assert renderer.take_errors() == []
    writer.flush()
    assert [(e.step, int(decode(e)[0, 0, 0])) for e in read_events(logdir).images["t"]] == [(1, 1), (3, 3)]


def drawn_by(event) -> tuple[int, int]:
    """(drawing process, its parent) of a helpers.pid_image, low 24 bits of each."""
    pid, parent = ((int(r) << 16) | (int(g) << 8) | int(b) for r, g, b in decode(event)[:, 0])
    return pid, parent


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="the second drawing process is a fork of the worker")


@needs_fork
def test_two_requests_at_once_are_drawn_side_by_side_and_written_in_order(direct):
    renderer, writer, logdir = direct
    # The first goes to the worker's fork (free), and takes a while; the second, asked meanwhile,
    # is drawn by the worker itself and answered first, but written second.
    renderer.submit(helpers.pid_image, (), {"pause": 1.0}, tag="slow", step=1, writer=writer)
    renderer.submit(helpers.pid_image, (), {}, tag="fast", step=2, writer=writer)
    assert renderer.drain(WAIT)
    assert renderer.take_errors() == []
    worker = renderer.pid & 0xFFFFFF
    writer.flush()
    events = read_events(logdir).images
    pid, parent = drawn_by(events["slow"][0])
    assert parent == worker and pid != worker  # the fork: the worker's child
    assert drawn_by(events["fast"][0]) == (worker, os.getpid() & 0xFFFFFF)  # the worker itself
    # Written in the order asked: the event file holds "slow" first.
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    [path] = logdir.glob("events.out.tfevents.*")
    tags = [v.tag for e in LegacyEventFileLoader(str(path)).Load() for v in e.summary.value if v.HasField("image")]
    assert tags == ["slow", "fast"]


@needs_fork
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="a process's age is read from /proc")
def test_the_second_drawing_process_is_forked_while_the_worker_idles_after_its_warm_ups(direct, tmp_path):
    renderer, writer, logdir = direct
    drawn = tmp_path / "drawn"
    renderer.submit(helpers.count, (str(drawn),), {}, tag="warm-up", step=0, writer=None)
    deadline = time.monotonic() + WAIT
    while not drawn.exists():  # the worker's start-up (its imports) comes first, however long it takes
        assert time.monotonic() < deadline, "the warm-up was not drawn"
        time.sleep(0.05)
    time.sleep(1.0)  # training, say: the worker has nothing to do and forks its drawer meanwhile
    renderer.submit(helpers.age_image, (), {}, tag="age", step=1, writer=writer)
    assert renderer.drain(WAIT)
    assert renderer.take_errors() == []
    writer.flush()
    age, pid, parent = (
        (int(r) << 16) | (int(g) << 8) | int(b) for r, g, b in decode(read_events(logdir).images["age"][0])[:, 0]
    )
    # The first real request went to the drawer (the worker's child), which was there already: forked
    # while the worker idled, well before it (a fork made for the request is a few ms old).
    assert parent == renderer.pid & 0xFFFFFF and pid != parent
    assert age >= 500


@needs_fork
def test_warm_ups_are_drawn_by_the_worker_then_once_more_by_the_drawer_it_forks(direct, tmp_path):
    renderer, _, _ = direct
    drawn = tmp_path / "drawn"
    for _ in range(4):  # as a plugin's on_fit_start asks them: all at once, each taking a while
        renderer.submit(helpers.count, (str(drawn), 0.3), {}, tag="warm-up", step=0, writer=None)
    worker = renderer._worker
    assert worker.started.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while len(drawn.read_text().splitlines() if drawn.exists() else []) < 8:
        assert time.monotonic() < deadline, "the warm-ups were not drawn by both drawing processes"
        time.sleep(0.05)
    time.sleep(0.5)  # nothing more is drawn
    lines = drawn.read_text().splitlines()
    # All four by the worker first: none was still waiting when the worker decided it was idle (a fork
    # then would draw those in both processes at once).  Then the drawer, forked once the worker idles,
    # draws them again, so that its first figure does not pay for copying the worker's memory.
    assert lines[:4] == [f"{renderer.pid} {os.getpid()}"] * 4
    (drawer,) = {line.split()[0] for line in lines[4:]}
    assert int(drawer) != renderer.pid and lines[4:] == [f"{drawer} {renderer.pid}"] * 4
    assert renderer.drain(WAIT) and renderer.take_errors() == []  # the second answers are dropped


@needs_fork
def test_a_dead_second_drawing_process_is_an_error_report_and_the_worker_draws_on(direct):
    renderer, writer, logdir = direct
    renderer.submit(helpers.exit_process, (3,), {}, tag="gone", step=1, writer=writer)  # to the fork: it exits
    assert renderer.drain(WAIT)
    ((fn, error),) = renderer.take_errors()
    assert fn is helpers.exit_process and isinstance(error, RenderError)
    assert "render_image('gone', step=1)" in str(error) and "second drawing process" in str(error)
    worker = renderer.pid
    for step in (2, 3):
        renderer.submit(helpers.pid_image, (), {}, tag="after", step=step, writer=writer)
    assert renderer.drain(WAIT)
    assert renderer.pid == worker and renderer.take_errors() == []
    writer.flush()
    after = read_events(logdir).images["after"]
    assert [drawn_by(e) for e in after] == [(worker & 0xFFFFFF, os.getpid() & 0xFFFFFF)] * 2


def test_one_drawing_process_when_asked(direct, monkeypatch):
    monkeypatch.setenv("TBHOOKS_RENDER_DRAWERS", "1")
    renderer, writer, logdir = direct
    renderer.submit(helpers.pid_image, (), {"pause": 0.3}, tag="a", step=1, writer=writer)
    renderer.submit(helpers.pid_image, (), {}, tag="b", step=1, writer=writer)
    assert renderer.drain(WAIT)
    worker = renderer.pid & 0xFFFFFF
    writer.flush()
    events = read_events(logdir).images
    assert drawn_by(events["a"][0]) == drawn_by(events["b"][0]) == (worker, os.getpid() & 0xFFFFFF)


def test_the_worker_ignores_ctrl_c(direct):
    renderer, writer, logdir = direct
    renderer.submit(helpers.flat, (1,), {}, tag="t", step=1, writer=writer)
    assert renderer.drain(WAIT)
    worker = renderer.pid
    os.kill(worker, signal.SIGINT)  # what Ctrl-C in a terminal sends to the whole process group
    renderer.submit(helpers.flat, (2,), {}, tag="t", step=2, writer=writer)
    assert renderer.drain(WAIT)
    assert renderer.pid == worker and renderer.take_errors() == []
    writer.flush()
    assert [e.step for e in read_events(logdir).images["t"]] == [1, 2]


def test_many_renders_keep_their_order_and_steps_with_a_full_queue(direct):
    renderer, writer, logdir = direct
    renderer.max_pending = 4  # submit waits for room, as run.submit does with a full queue
    for step in range(30):
        renderer.submit(helpers.flat, ((7 * step) % 256,), {}, tag="many", step=step, writer=writer)
    assert renderer.drain(WAIT)
    assert renderer.take_errors() == []
    writer.flush()
    many = read_events(logdir).images["many"]
    assert [e.step for e in many] == list(range(30))
    assert [int(decode(e)[1, 1, 2]) for e in many] == [(7 * step) % 256 for step in range(30)]
    times = [e.wall_time for e in many]
    assert times == sorted(times)


def test_without_a_worker_images_are_drawn_on_the_background_thread(direct, monkeypatch, caplog):
    renderer, writer, logdir = direct
    monkeypatch.setattr(RenderProcess, "command", staticmethod(lambda: ["/nonexistent/tbhooks-python"]))
    caplog.set_level(logging.INFO, logger="tbhooks")
    renderer.submit(helpers.pid_image, (), {}, tag="pid", step=1, writer=writer)
    renderer.submit(helpers.fail, ("no disk",), {}, tag="broken", step=2, writer=writer)
    renderer.submit(helpers.flat, (5,), {}, tag="flat", step=3, writer=writer)
    assert renderer.drain(WAIT)
    renderer._fallback.__self__.drain()  # the background thread's queue
    ((fn, error),) = renderer.take_errors()
    assert fn is helpers.fail and isinstance(error, OSError) and str(error) == "no disk"
    notes = [r.getMessage() for r in caplog.records if "could not be started" in r.getMessage()]
    assert len(notes) == 1 and "drawn on a thread" in notes[0]
    writer.flush()
    images = read_events(logdir).images
    red, green, blue = (int(v) for v in decode(images["pid"][0])[0, 0])
    assert (red << 16) | (green << 8) | blue == os.getpid() & 0xFFFFFF  # drawn in this process
    assert int(decode(images["flat"][0])[0, 0, 0]) == 5


def test_other_ranks_draw_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with tbhooks.attach(mlp(), logdir=tmp_path / "rank1", disable=BUILTIN_PLUGINS, autoload=False) as hooks:
        assert not hooks.run.is_writer
        hooks.run.render_image("t", 1, helpers.flat, 1)
        assert hooks.run._render is None  # no worker process on this rank
    assert not (tmp_path / "rank1").exists()


def start_child(logdir, pause: float):
    """``_render_helpers.py`` run as a training script, in its own process group like a job in a terminal."""
    return subprocess.Popen(
        [sys.executable, helpers.__file__, str(logdir), str(pause)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )


def test_ctrl_c_in_a_terminal_ends_the_run_with_its_images_and_no_worker_left(tmp_path):
    # Ctrl-C in a terminal sends SIGINT to the whole foreground process group: the worker ignores
    # it (even while it is starting), so the run's close still gets every image it asked for.
    child = start_child(tmp_path, pause=1.0)
    try:
        worker = int(child.stdout.readline())  # the worker has just been started
        os.killpg(child.pid, signal.SIGINT)
        _, stderr = child.communicate(timeout=WAIT)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert "KeyboardInterrupt" in stderr
    slow = read_events(tmp_path).images["slow"]
    assert [(e.step, int(decode(e)[0, 0, 0])) for e in slow] == [(1, 11), (2, 22)]
    assert ended(worker)


def test_a_worker_whose_training_process_was_killed_ends_even_in_a_drawing_that_never_ends(tmp_path):
    child = start_child(tmp_path, pause=3600.0)
    try:
        worker = int(child.stdout.readline())
        child.kill()  # SIGKILL: no close, no end of stdin while the worker draws
        child.communicate(timeout=WAIT)
        assert ended(worker)  # within a second or two, not an hour
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


def test_a_request_the_pipe_has_room_for_is_written_by_the_sending_thread(direct, monkeypatch):
    # Waking the sender thread cost the training thread up to a switch interval (5 ms): a request is
    # written directly when the sender has nothing left to write and the pipe can take all of it.
    # Where the pipe's room cannot be known (pipe_room 0) the sender writes, as before; either way the
    # requests reach the worker in order.
    renderer, writer, logdir = direct
    writers: list[str] = []
    write = render_worker._write_message

    def recording(stream: Any, ident: int, body: bytes) -> None:
        if ident != render_worker._PATH_ID:
            writers.append(threading.current_thread().name)
        write(stream, ident, body)

    monkeypatch.setattr(render_worker, "_write_message", recording)
    renderer.submit(helpers.flat, (0,), {}, tag="order", step=0, writer=writer)
    assert renderer.drain(WAIT)  # the worker is up and the sender idle
    assert render_worker.pipe_room(renderer._worker.process.stdin.fileno()) > 60_000  # a Linux pipe, empty
    for step in range(1, 4):
        renderer.submit(helpers.flat, (step,), {}, tag="order", step=step, writer=writer)
    monkeypatch.setattr(render_worker, "pipe_room", lambda fd: 0)
    for step in range(4, 7):
        renderer.submit(helpers.flat, (step,), {}, tag="order", step=step, writer=writer)
    assert renderer.drain(WAIT)
    assert renderer.take_errors() == []
    assert writers == ["tbhooks-render-send"] + ["MainThread"] * 3 + ["tbhooks-render-send"] * 3
    writer.flush()
    images = read_events(logdir).images["order"]
    assert [e.step for e in images] == list(range(7))
    assert [int(decode(e)[0, 0, 0]) for e in images] == list(range(7))


class _RecordingRaw(io.RawIOBase):
    """A raw stream that records the size of each write it is given (each would be a system call)."""

    def __init__(self) -> None:
        self.writes: list[int] = []
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk: Any) -> int:
        self.writes.append(len(chunk))
        self.data += chunk
        return len(chunk)


@pytest.mark.parametrize("size", [10, 25_600, 100_000])
def test_a_message_is_one_write_whatever_its_size(size):
    # Each write to the worker's pipe wakes the process reading it; a body larger than the stream's
    # buffer used to go out as two writes (header, then body), two wake-ups in a plugin's hook.
    raw = _RecordingRaw()
    stream = io.BufferedWriter(raw, buffer_size=8192)
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    render_worker._write_message(stream, 9, body)
    assert raw.writes == [render_worker._HEADER.size + size]
    assert render_worker._read_message(io.BytesIO(bytes(raw.data))) == (9, body)


def test_the_watchdog_starts_with_the_worker_so_that_close_starts_no_thread(direct, monkeypatch):
    # Starting a thread waits until it runs: close used to start the watchdog, and took up to a
    # millisecond longer where the cores were busy.  The watchdog still kills a worker that does not
    # exit (the two tests above); one that exits by itself ends it too.
    renderer, writer, _ = direct
    renderer.submit(helpers.flat, (3,), {}, tag="t", step=1, writer=writer)
    assert renderer.drain(WAIT)
    worker = renderer._worker
    assert worker._watchdog is not None and worker._watchdog.is_alive()
    started: list[str] = []
    start = threading.Thread.start

    def recording(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", recording)
    renderer.close()
    assert started == []
    assert worker.finished.wait(WAIT)
    worker._reader.join(WAIT)
    worker._watchdog.join(WAIT)
    assert not worker._watchdog.is_alive()
    assert worker.process.returncode == 0  # asked to stop, not killed


def test_a_worker_that_dies_ends_its_watchdog(direct):
    renderer, writer, _ = direct
    renderer.submit(helpers.flat, (1,), {}, tag="t", step=1, writer=writer)
    assert renderer.drain(WAIT)
    worker = renderer._worker
    os.kill(renderer.pid, signal.SIGKILL)
    assert worker.finished.wait(WAIT)
    worker._watchdog.join(WAIT)
    assert not worker._watchdog.is_alive()


def test_the_run_closes_its_writer_before_it_lets_the_worker_exit(tmp_path, monkeypatch):
    # The worker's exit wakes three threads here and keeps another core busy: the writer's close,
    # which waits for its own thread, comes first.  Every image is written before either.
    order: list[str] = []
    with tbhooks.attach(mlp(), logdir=tmp_path, disable=BUILTIN_PLUGINS, autoload=False) as hooks:
        hooks.run.render_image("img", 1, helpers.flat, 70)
        worker = hooks.run._render._worker
        close_writer, stop_worker = hooks.run.writer.close, worker.stop
        monkeypatch.setattr(hooks.run.writer, "close", lambda: (order.append("writer"), close_writer())[1])
        monkeypatch.setattr(worker, "stop", lambda timeout: (order.append("worker"), stop_worker(timeout))[1])
    assert order == ["writer", "worker"]
    (image,) = read_events(tmp_path).images["img"]
    assert int(decode(image)[0, 0, 0]) == 70
    assert worker.finished.wait(WAIT)
    worker._reader.join(WAIT)
    assert worker.process.returncode == 0
