"""The demo: accuracy, what it writes, its options and errors, both loops, and a plugin of your own."""

from __future__ import annotations

import importlib.util
import io
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEMO_RUN_BATCH_SIZE, DEMO_RUN_EPOCHS, figures_installed, plugin_installed
from torch import nn

import tbhooks
from tbhooks import demo
from tbhooks.demo.cli import DemoResult, fresh_run_dir
from tbhooks.demo.data import FASHION_CLASSES, load_fashion_mnist
from tbhooks.demo.errors import DemoError
from tbhooks.demo.loops import LOOPS, fit_custom_loop, fit_trainer
from tbhooks.demo.report import dashboard_summary, format_report
from tbhooks.manager import BUILTIN_PLUGINS
from tbhooks.run import safe_tag
from tbhooks.testing import HookRecorder, read_events

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """Import ``demo/<name>.py`` as a module (the demo scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"demo_{name}", REPO / "demo" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_demo(*argv: str) -> DemoResult:
    return demo.run(demo.build_parser().parse_args(list(argv)), stream=io.StringIO())


def tags_by_dashboard(run_dir: Path) -> dict[str, set[str]]:
    return {name: set(board.tags) for name, board in dashboard_summary(run_dir).items()}


def steps_per_epoch(result: DemoResult, batch_size: int = DEMO_RUN_BATCH_SIZE) -> int:
    """Training batches an epoch of ``result`` had (the last one may be short)."""
    return math.ceil(len(result.data.train) / batch_size)


# ---------------------------------------------------------------------------
# the default run (3 epochs of the full digits, every plugin; conftest.demo_run)
# ---------------------------------------------------------------------------


def test_digits_accuracy_over_90_percent(demo_run):
    data = demo_run.data
    assert (len(data.train), len(data.test)) == (1438, 359)  # 1797 digits, 20% held out
    images, labels = data.test.tensors
    assert images.shape == (359, 1, 28, 28)
    model = demo_run.model.eval()
    with torch.no_grad():
        accuracy = (model(images.to(demo_run.device)).argmax(dim=1).cpu() == labels).float().mean().item()
    assert accuracy > 0.9
    assert demo_run.metrics["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    events = read_events(demo_run.run_dir)
    assert events.values("eval/accuracy")[-1] == pytest.approx(accuracy, abs=1e-6)
    per_epoch = steps_per_epoch(demo_run)
    assert per_epoch == 90  # 1438 / 16, the last batch short
    assert events.steps("eval/accuracy") == [per_epoch * epoch for epoch in range(1, DEMO_RUN_EPOCHS + 1)]
    assert demo_run.output.count("test accuracy") == DEMO_RUN_EPOCHS


def test_digits_match_sklearn_resized(demo_run):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    first_test = order[0].item()
    small = torch.tensor(bunch.images[first_test], dtype=torch.float32)[None, None] / 16
    expected = (nn.functional.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False) - 0.5) / 0.5
    images, labels = demo_run.data.test.tensors
    assert torch.allclose(images[0], expected[0])
    assert labels[0].item() == bunch.target[first_test]
    assert images.min() >= -1 and images.max() <= 1


def test_every_dashboard_gets_data(demo_run):
    boards = tags_by_dashboard(demo_run.run_dir)
    assert {"train/loss", "train/lr", "train/epoch_loss", "eval/loss", "eval/accuracy"} <= boards["SCALARS"]
    assert "images/inputs" in boards["IMAGES"]
    assert boards["GRAPHS"] == {"model graph"}
    layers = ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert {f"activations/{name}" for name in layers} <= boards["DISTRIBUTIONS/HISTOGRAMS"]
    assert {f"weights/{name}.weight" for name in layers} <= boards["DISTRIBUTIONS/HISTOGRAMS"]
    assert {f"grads/{name}.bias" for name in layers} <= boards["DISTRIBUTIONS/HISTOGRAMS"]
    assert boards["PR CURVES"] == {f"pr_curves/{digit}" for digit in range(10)}
    assert boards["HPARAMS"] == {"session"}
    assert dashboard_summary(demo_run.run_dir)["HPARAMS"].note == "6 hyperparameters"
    # Embeddings every 3rd evaluation = one, at the last; with the images as sprites.
    last = steps_per_epoch(demo_run) * DEMO_RUN_EPOCHS
    assert boards["PROJECTOR"] == {f"embeddings/fc3/step{last}:{last:05d}"}
    assert demo_run.dashboards["PROJECTOR"].note.endswith("1 with a sprite")
    assert (demo_run.run_dir / "projector_config.pbtxt").is_file()
    if figures_installed():
        assert {"figures/confusion_matrix", "figures/predictions_vs_actuals"} <= boards["IMAGES"]


def test_histograms_twice_and_losses_five_times_an_epoch(demo_run):
    events = read_events(demo_run.run_dir)
    per_epoch = steps_per_epoch(demo_run)
    last = per_epoch * DEMO_RUN_EPOCHS
    every = per_epoch // 2
    assert [h.step for h in events.histograms["activations/fc1"]] == list(range(every, last + 1, every))
    # train/loss: the batch loss of every (a fifth of an epoch)-th step; train/epoch_loss at each epoch's end.
    every = per_epoch // 5
    assert events.steps("train/loss") == list(range(every, last + 1, every))
    assert events.steps("train/epoch_loss") == list(range(per_epoch, last + 1, per_epoch))
    # The epoch losses logged are those the demo printed (4 decimals).
    epoch_lines = [line for line in demo_run.output.splitlines() if line.startswith("epoch ")]
    printed = [float(line.split("train loss ")[1].split()[0]) for line in epoch_lines]
    assert len(printed) == DEMO_RUN_EPOCHS
    assert events.values("train/epoch_loss") == pytest.approx(printed, abs=5e-5)
    assert events.values("train/epoch_loss")[-1] < events.values("train/epoch_loss")[0]


@pytest.mark.skipif(not plugin_installed("example"), reason="tbhooks-example is not installed")
def test_example_plugin_counts_the_run(demo_run):
    from tbhooks_example import Example

    steps = steps_per_epoch(demo_run) * DEMO_RUN_EPOCHS
    sampled = steps // Example().every_n_steps  # on_batch_end is raised on its declared steps only
    expected = f"{steps} steps, {sampled} sampled, {DEMO_RUN_EPOCHS} epochs, {DEMO_RUN_EPOCHS} evaluations"
    assert read_events(demo_run.run_dir).texts["example/summary/text_summary"] == [expected]


def test_report_names_run_counts_and_command(demo_run):
    report = format_report(demo_run, demo_run.run_dir.parent)
    lines = report.splitlines()
    assert lines[0] == f"final test accuracy: {demo_run.metrics['accuracy']:.4f}"
    assert f"log directory: {demo_run.run_dir}" in lines
    pr_line = next(line for line in lines if line.strip().startswith("PR CURVES"))
    assert " 10 tags" in pr_line
    assert lines[-1].endswith(f"tensorboard --logdir {demo_run.run_dir.parent}")


def test_each_run_gets_a_fresh_directory(tmp_path):
    first = fresh_run_dir(tmp_path, "digits-trainer")
    first.mkdir()
    second = fresh_run_dir(tmp_path, "digits-trainer")
    assert second != first and second.parent == tmp_path
    assert second.name.startswith("digits-trainer-")
    if second.name.startswith(first.name):  # the same second: a numbered suffix
        assert second.name == f"{first.name}-2"


# ---------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------

QUICK = ("--epochs", "1", "--limit", "160", "--batch-size", "32")


@pytest.mark.skipif(not figures_installed(), reason="tbhooks-figures is not installed")
def test_disable_figures(demo_run, tmp_path):
    result = run_demo("--logdir", str(tmp_path), *QUICK, "--disable", "figures")
    images = tags_by_dashboard(result.run_dir)["IMAGES"]
    assert images == {"images/inputs"}
    assert not any(tag.startswith("figures/") for tag in read_events(result.run_dir).images)
    # ... while the run with every plugin has them.
    assert "figures/confusion_matrix" in tags_by_dashboard(demo_run.run_dir)["IMAGES"]


def test_unknown_plugin_in_disable_is_one_line(tmp_path, capsys):
    assert demo.main(["--logdir", str(tmp_path), "--disable", "nosuchplugin"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "'nosuchplugin'" in err[0] and "known plugins:" in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing trained or written


@pytest.mark.parametrize(
    "argv", [["--epochs", "0"], ["--batch-size", "x"], ["--dataset", "cifar"], ["--loop", "nosuchloop"]]
)
def test_bad_arguments_exit_2(argv, capsys):
    assert demo.main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_loop_choices_are_the_loops_table():
    assert list(LOOPS) == ["trainer", "custom", "lightning", "ignite", "transformers"]
    assert LOOPS["trainer"] is fit_trainer and LOOPS["custom"] is fit_custom_loop
    parser = demo.build_parser()
    assert parser.parse_args([]).loop == "trainer"
    for name in LOOPS:
        assert parser.parse_args(["--loop", name]).loop == name
    assert "--loop {trainer,custom,lightning,ignite,transformers}" in parser.format_usage()


@pytest.mark.parametrize(
    ("loop", "missing", "extra"),
    [
        ("lightning", {"lightning", "pytorch_lightning"}, "tbhooks[lightning]"),
        ("ignite", {"ignite"}, "tbhooks[ignite]"),
        ("transformers", {"accelerate"}, "tbhooks[transformers]"),
    ],
)
def test_a_framework_loop_without_its_extra_is_one_line(tmp_path, capsys, monkeypatch, loop, missing, extra):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name, *a))
    assert demo.main(["--logdir", str(tmp_path), "--loop", loop]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--loop {loop} needs" in err and f"pip install '{extra}'" in err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


@pytest.mark.parametrize("loop", ["lightning", "ignite", "transformers"])
def test_each_framework_loop_fills_the_dashboards(tmp_path, capsys, loop):
    assert demo.main(["--logdir", str(tmp_path), "--loop", loop, "--epochs", "1", "--limit", "96"]) == 0
    out = capsys.readouterr().out
    [run] = list(tmp_path.iterdir())
    events = read_events(run)
    assert {"train/loss", "eval/loss", "eval/accuracy"} <= set(events.scalars), sorted(events.scalars)
    assert events.pr_curves and events.histograms and events.graph
    assert "figures/confusion_matrix" in events.images or not figures_installed()
    assert f"log directory: {run}" in out


def test_help_exits_0(capsys):
    assert demo.main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--logdir", "--epochs", "--dataset", "--data-dir", "--download", "--disable", "--loop"):
        assert option in out


def test_cuda_without_cuda_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert demo.main(["--logdir", str(tmp_path), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tbhooks demo: error: --device cuda: no CUDA device is available here; use --device cpu or auto"]


def test_missing_scikit_learn_says_what_to_install(tmp_path, capsys, monkeypatch):
    # None in sys.modules makes `import sklearn.datasets` raise ImportError, as when it is not installed.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DemoError, match=r"pip install 'tbhooks\[demo\]'"):
        demo.load_digits()
    assert demo.main(["--logdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'tbhooks[demo]'" in err[0]


# ---------------------------------------------------------------------------
# FashionMNIST
# ---------------------------------------------------------------------------


def write_idx(path: Path, array: torch.Tensor) -> None:
    """The raw IDX format: magic (0, 0, type 0x08 = uint8, number of dims), big-endian dims, the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.to(torch.uint8).contiguous().numpy().tobytes())


def write_fashion(root: Path, train: int = 64, test: int = 20) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    arrays = {
        "train-images-idx3-ubyte": torch.randint(0, 256, (train, 28, 28), generator=generator, dtype=torch.uint8),
        "train-labels-idx1-ubyte": torch.arange(train, dtype=torch.uint8) % 10,
        "t10k-images-idx3-ubyte": torch.randint(0, 256, (test, 28, 28), generator=generator, dtype=torch.uint8),
        "t10k-labels-idx1-ubyte": (torch.arange(test, dtype=torch.uint8) * 3) % 10,
    }
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, array in arrays.items():
        write_idx(raw / name, array)
    return arrays


def test_idx_files_have_the_documented_magic_numbers(tmp_path):
    write_fashion(tmp_path)
    raw = tmp_path / "FashionMNIST" / "raw"
    assert struct.unpack(">iiii", (raw / "train-images-idx3-ubyte").read_bytes()[:16]) == (2051, 64, 28, 28)
    assert struct.unpack(">ii", (raw / "t10k-labels-idx1-ubyte").read_bytes()[:8]) == (2049, 20)


def test_fashion_mnist_loads_idx_files(tmp_path):
    arrays = write_fashion(tmp_path)
    data = load_fashion_mnist(tmp_path)
    assert data.class_names == FASHION_CLASSES
    train_images, train_labels = data.train.tensors
    test_images, test_labels = data.test.tensors
    assert train_images.shape == (64, 1, 28, 28) and test_images.shape == (20, 1, 28, 28)
    expected = (arrays["t10k-images-idx3-ubyte"].float() / 255 - 0.5) / 0.5
    assert torch.allclose(test_images[:, 0], expected)
    assert train_labels.tolist() == [i % 10 for i in range(64)]
    assert test_labels.tolist() == [(i * 3) % 10 for i in range(20)]


def test_fashion_mnist_demo_runs_on_idx_files(tmp_path, capsys):
    write_fashion(tmp_path / "data")
    logdir = tmp_path / "runs"
    argv = ["--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--logdir", str(logdir)]
    assert demo.main([*argv, "--epochs", "1", "--disable", "graph", "histograms", "embeddings"]) == 0
    (run_dir,) = logdir.iterdir()
    assert run_dir.name.startswith("fashion-mnist-trainer-")
    out = capsys.readouterr().out
    assert "fashion-mnist, 64 training / 20 test samples" in out
    # The PR curves are named after the FashionMNIST classes (made tag-safe).
    assert set(read_events(run_dir).pr_curves) == {safe_tag("pr_curves", name) for name in FASHION_CLASSES}


def test_fashion_mnist_corrupt_file_is_one_line(tmp_path):
    write_fashion(tmp_path)
    (tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(DemoError, match="could not be read from") as info:
        load_fashion_mnist(tmp_path)
    assert "\n" not in str(info.value) and "--data-dir" in str(info.value)


def test_fashion_mnist_missing_is_one_line_exit_2(tmp_path):
    # The command as a user runs it: a subprocess, the real exit status, nothing but one line on stderr.
    done = subprocess.run(
        [sys.executable, "-m", "tbhooks.cli", "demo", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tbhooks demo: error: FashionMNIST not found in /nonexistent/FashionMNIST/raw")
    assert "--download" in lines[0] and "--data-dir" in lines[0]
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------
# the two loops, and the scripts in demo/
# ---------------------------------------------------------------------------


def bare_batch_losses(epochs: int, limit: int, batch_size: int, seed: int = 0) -> list[float]:
    """The demo's training in plain PyTorch, without tbhooks: the loss of every step, in order."""
    data = demo.load_digits(seed=seed).limited(limit)
    train_loader, _ = demo.make_loaders(data, batch_size, seed=seed)
    torch.manual_seed(seed)
    model = demo.Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=demo.LEARNING_RATE)
    losses = []
    for _ in range(epochs):
        for inputs, targets in train_loader:
            loss = nn.functional.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


def test_trainer_and_custom_loop_write_the_same(tmp_path):
    epochs, limit, batch_size = 2, 160, 16  # 10 steps an epoch: train/loss every 2nd step
    quick = ["--epochs", str(epochs), "--limit", str(limit), "--batch-size", str(batch_size)]
    by_trainer = run_demo("--logdir", str(tmp_path / "cli"), *quick, "--loop", "trainer")
    by_loop = run_demo("--logdir", str(tmp_path / "cli"), *quick, "--loop", "custom")
    script_trainer = load_script("trainer").main(["--logdir", str(tmp_path / "script-trainer"), *quick])
    script_loop = load_script("custom_loop").main(["--logdir", str(tmp_path / "script-loop"), *quick])

    runs = [by_trainer.run_dir, by_loop.run_dir, tmp_path / "script-trainer", tmp_path / "script-loop"]
    boards = [tags_by_dashboard(run_dir) for run_dir in runs]
    for other in boards[1:]:
        assert other == boards[0]
    assert boards[0]["SCALARS"] >= {"train/loss", "eval/accuracy"} and boards[0]["PR CURVES"]

    # Same seed, same data order, same weights: the same numbers, step for step.  The two
    # `tbhooks demo` runs use the same thread count and agree exactly; the scripts keep torch's
    # default thread count, which may sum in another order (differences around 1e-7).
    events = [read_events(run_dir) for run_dir in runs]
    for tag in ("train/loss", "train/epoch_loss", "eval/loss", "eval/accuracy"):
        reference = [(s.step, s.value) for s in events[0].scalars[tag]]
        assert [(s.step, s.value) for s in events[1].scalars[tag]] == reference
        for other in events[2:]:
            assert [(s.step, pytest.approx(s.value, rel=1e-5)) for s in other.scalars[tag]] == reference
    assert by_trainer.metrics == by_loop.metrics
    assert script_trainer == pytest.approx(by_trainer.metrics, rel=1e-5)
    assert script_loop == pytest.approx(by_trainer.metrics, rel=1e-5)

    # And the numbers are the training's own: train/loss is the batch loss of every logged step,
    # train/epoch_loss the mean batch loss of each epoch, as a loop without tbhooks computes them.
    losses = bare_batch_losses(epochs, limit, batch_size)
    per_epoch = math.ceil(limit / batch_size)
    assert len(losses) == epochs * per_epoch
    every = max(1, per_epoch // 5)  # demo_plugins' scalars interval
    assert every > 1  # so a mean over the interval would differ from the step's batch loss
    logged = events[0].scalars["train/loss"]
    assert [s.step for s in logged] == list(range(every, len(losses) + 1, every))
    assert [s.value for s in logged] == pytest.approx([losses[s.step - 1] for s in logged], rel=1e-5)
    epoch_means = [sum(losses[i : i + per_epoch]) / per_epoch for i in range(0, len(losses), per_epoch)]
    assert events[0].values("train/epoch_loss") == pytest.approx(epoch_means, rel=1e-5)


# ---------------------------------------------------------------------------
# a plugin of your own (demo/my_plugin.py), registered by object
# ---------------------------------------------------------------------------


def test_my_plugin_logs_the_gradient_norm(tmp_path):
    GradNorm = load_script("my_plugin").GradNorm  # noqa: N806 (a class)
    torch.manual_seed(0)
    model = demo.Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs, targets = torch.randn(6, 8, 1, 28, 28), torch.randint(0, 10, (6, 8))
    expected = {}
    with tbhooks.attach(
        model,
        logdir=tmp_path,
        optimizer=optimizer,
        plugins=[GradNorm(every_n_steps=2)],
        disable=list(BUILTIN_PLUGINS),
        autoload=False,
    ) as hooks:
        recorder = HookRecorder(hooks)
        hooks.epoch_start()
        for step, (x, y) in enumerate(zip(inputs, targets, strict=True), start=1):
            hooks.batch_start()
            outputs = model(x)
            loss = nn.functional.cross_entropy(outputs, y)
            optimizer.zero_grad()
            loss.backward()
            # Computed here, independently: the norm of all gradients as one vector.
            expected[step] = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
            optimizer.step()
            hooks.batch_end(x, y, outputs, loss)
        hooks.epoch_end()
    logged = read_events(tmp_path).scalars["my/grad_norm"]
    assert [s.step for s in logged] == [2, 4, 6]
    assert [s.value for s in logged] == pytest.approx([expected[2], expected[4], expected[6]], rel=1e-5)
    assert set(read_events(tmp_path).scalars) == {"my/grad_norm"}  # the built-ins were disabled
    # It declares its schedule (batch_end_due), so on the other steps on_batch_end is not raised at all.
    assert [call["step"] for call in recorder.of("on_batch_end")] == [2, 4, 6]


def test_my_plugin_checks_its_option():
    GradNorm = load_script("my_plugin").GradNorm  # noqa: N806 (a class)
    with pytest.raises(ValueError, match=r"GradNorm\(every_n_steps=...\) expects an int >= 1, got 0"):
        GradNorm(every_n_steps=0)
    assert len((REPO / "demo" / "my_plugin.py").read_text().splitlines()) <= 30
