"""End to end: the demo's run (every plugin) served by a real TensorBoard, checked through its HTTP API.

The run is ``conftest.demo_run`` (3 epochs of the digits, every built-in and
the ``figures`` entry point).  The server is TensorBoard's own command with
the Python data loader (``--load_fast=false``: no Rust data server, which
would add a second process and a start-up race), bound to 127.0.0.1 on a free
port.  Every dashboard's data route is asked, and the answers are compared
with what the run wrote (read independently with ``tbhooks.testing.read_events``).
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import DEMO_RUN_BATCH_SIZE, DEMO_RUN_EPOCHS, figures_installed, plugin_installed

from tbhooks.testing import read_events

pytestmark = pytest.mark.slow

STARTUP_SECONDS = 120
"""How long to wait for the server to answer and to have loaded the run (first load is in a thread)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tensorboard_command() -> list[str]:
    beside = Path(sys.executable).parent / "tensorboard"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "tensorboard.main"]


class Server:
    """A running ``tensorboard`` and a tiny JSON client for it."""

    def __init__(self, logdir: Path, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._log = log.open("wb")
        flags = ["--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(self.port)]
        # The Python loader (no Rust data server process); reload every second so the run shows up fast.
        flags += ["--load_fast=false", "--reload_interval", "1"]
        self.process = subprocess.Popen([*tensorboard_command(), *flags], stdout=self._log, stderr=subprocess.STDOUT)
        self.log_path = log

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._log.close()

    def get(self, route: str, **query: str) -> bytes:
        url = f"{self.base}{route}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            return response.read()

    def json(self, route: str, **query: str):
        return json.loads(self.get(route, **query))

    def post_json(self, route: str, body: dict):
        request = urllib.request.Request(
            f"{self.base}{route}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            return json.loads(response.read())

    def wait_for(self, what: str, probe, timeout: float = STARTUP_SECONDS):
        """Poll ``probe()`` until it returns something truthy; fail with the server's log otherwise."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"tensorboard exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                found = probe()
                if found:
                    return found
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as exc:
                last_error = exc
            time.sleep(0.5)
        pytest.fail(f"tensorboard: {what} not ready after {timeout} s ({last_error!r}):\n{self.log_path.read_text()}")


@pytest.fixture(scope="module")
def server(demo_run, tmp_path_factory):
    served = Server(demo_run.run_dir.parent, tmp_path_factory.mktemp("tensorboard") / "server.log")
    try:
        yield served
    finally:
        served.stop()


def test_every_dashboard_serves_the_demo_run(server, demo_run):
    run = demo_run.run_dir.name
    events = read_events(demo_run.run_dir)
    per_epoch = math.ceil(len(demo_run.data.train) / DEMO_RUN_BATCH_SIZE)
    eval_steps = [per_epoch * epoch for epoch in range(1, DEMO_RUN_EPOCHS + 1)]
    test_images = len(demo_run.data.test)

    # The server answers and has loaded the run (the first load runs in a thread).
    runs = server.wait_for("the run", lambda: run in server.json("/data/runs") and server.json("/data/runs"))
    assert runs == [run]
    # The projector decides it is active in a background thread: ask until it says so.
    listing = server.wait_for(
        "the plugin listing",
        lambda: (lambda ls: ls if ls["projector"]["enabled"] else None)(server.json("/data/plugins_listing")),
    )
    for plugin in ("scalars", "images", "graphs", "distributions", "histograms", "projector", "text", "pr_curves"):
        assert listing[plugin]["enabled"], plugin
    assert listing["hparams"]["enabled"]

    # SCALARS: the tags, and the values as TensorBoard serves them equal the event file's.
    scalar_tags = server.json("/data/plugin/scalars/tags")[run]
    assert {"train/loss", "train/lr", "train/epoch_loss", "eval/loss", "eval/accuracy"} <= set(scalar_tags)
    served = server.json("/data/plugin/scalars/scalars", run=run, tag="eval/accuracy")
    assert [(step, value) for _, step, value in served] == [
        (s.step, pytest.approx(s.value)) for s in events.scalars["eval/accuracy"]
    ]
    assert [step for _, step, _ in served] == eval_steps
    assert served[-1][2] == pytest.approx(demo_run.metrics["accuracy"]) and served[-1][2] > 0.9

    # IMAGES: the input grid (and the figures), served as PNG.
    image_tags = set(server.json("/data/plugin/images/tags")[run])
    expected_images = {"images/inputs"}
    if figures_installed():
        expected_images |= {"figures/confusion_matrix", "figures/predictions_vs_actuals"}
    assert expected_images <= image_tags
    for tag in sorted(expected_images):
        (first, *_) = server.json("/data/plugin/images/images", run=run, tag=tag, sample="0")
        png = server.get(f"/data/plugin/images/individualImage?{first['query']}")
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), tag

    # HISTOGRAMS / DISTRIBUTIONS: weights, gradients and module-hook activations.
    histogram_tags = set(server.json("/data/plugin/histograms/tags")[run])
    assert {"weights/conv1.weight", "grads/fc3.weight", "activations/conv2", "activations/fc2"} <= histogram_tags
    assert histogram_tags == set(events.histograms)
    served = server.json("/data/plugin/histograms/histograms", run=run, tag="activations/fc1")
    assert [step for _, step, _ in served] == [h.step for h in events.histograms["activations/fc1"]]
    distributions = server.json("/data/plugin/distributions/distributions", run=run, tag="weights/fc1.weight")
    assert len(distributions) == len(served)

    # PR CURVES: one curve per class, named after the class.
    pr_tags = set(server.json("/data/plugin/pr_curves/tags")[run])
    assert pr_tags == {f"pr_curves/{digit}" for digit in range(10)}
    curves = server.json("/data/plugin/pr_curves/pr_curves", run=run, tag="pr_curves/3")[run]
    assert [entry["step"] for entry in curves] == eval_steps
    assert all(0 <= p <= 1 for p in curves[-1]["precision"]) and max(curves[-1]["recall"]) == pytest.approx(1)

    # GRAPHS: the traced model, with the tutorial's layers in it.
    info = server.json("/data/plugin/graphs/info")[run]
    assert info["run_graph"] is True
    graph = server.get("/data/plugin/graphs/graph", run=run).decode()
    for layer in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        assert layer in graph, layer

    # PROJECTOR: the embedding of the last evaluation, one point of 84 features per test image
    # (359 of them), labels and a sprite.
    assert server.json("/data/plugin/projector/runs") == [run]
    config = server.json("/data/plugin/projector/info", run=run)
    (embedding,) = config["embeddings"]
    assert embedding["tensorName"].startswith(f"embeddings/fc3/step{eval_steps[-1]}")
    assert embedding["tensorShape"] == [test_images, 84]
    assert embedding["sprite"]["imagePath"].endswith("sprite.png")
    sprite = server.get("/data/plugin/projector/sprite_image", run=run, name=embedding["tensorName"])
    assert sprite.startswith(b"\x89PNG\r\n\x1a\n")
    labels = server.get("/data/plugin/projector/metadata", run=run, name=embedding["tensorName"]).decode()
    assert len(labels.splitlines()) == test_images == 359
    assert set(labels.split()) <= {str(digit) for digit in range(10)}

    # TEXT: the hparams table and the model summary (and the example plugin's line, when installed).
    text_tags = set(server.json("/data/plugin/text/tags")[run])
    assert {"hparams/summary/text_summary", "hparams/model/text_summary"} <= text_tags
    if plugin_installed("example"):
        from tbhooks_example import Example

        steps = eval_steps[-1]
        sampled = steps // Example().every_n_steps
        expected = f"{steps} steps, {sampled} sampled, {DEMO_RUN_EPOCHS} epochs, {DEMO_RUN_EPOCHS} evaluations"
        (served_text,) = server.json("/data/plugin/text/text", run=run, tag="example/summary/text_summary")
        assert served_text["step"] == steps
        assert f"<p>{expected}</p>" in served_text["text"]  # TensorBoard renders the text as markdown

    # HPARAMS: the hyper-parameters the demo passed and the final metrics as metric columns.
    experiment = server.post_json("/data/plugin/hparams/experiment", {"experimentName": ""})
    names = {info["name"] for info in experiment["hparamInfos"]}
    assert names == {"model", "optimizer", "lr", "epochs", "batch_size", "parameters"}
    metrics = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {"hparams/eval_accuracy", "hparams/eval_loss"} <= metrics
    groups = server.post_json(
        "/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [{"hparam": "lr"}, {"hparam": "epochs"}],
            "startIndex": 0,
            "sliceSize": 10,
        },
    )
    (group,) = groups["sessionGroups"]
    assert group["hparams"]["lr"] == pytest.approx(1e-3)
    assert group["hparams"]["epochs"] == DEMO_RUN_EPOCHS
