"""The figures plugin in real runs: found through its installed entry point, figures drawn in the
render worker, read back with TensorBoard's EventAccumulator and compared pixel for pixel with the
same figures drawn here from values this test computes itself."""

from __future__ import annotations

import io
import json
import logging
import os
from importlib.metadata import entry_points

import _figures_helpers
import numpy as np
import pytest
import torch
from PIL import Image
from tbhooks_figures.plugin import CONFUSION_TAG, PREDICTIONS_TAG, Figures
from tbhooks_figures.render import confusion_matrix_figure, predictions_figure
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tbhooks
from tbhooks.manager import BUILTIN_PLUGINS
from tbhooks.render import render_png
from tbhooks.testing import read_events

NAMES = ["cat", "dog", "bird"]
# Every other plugin a run would load (built-ins, other installed distributions): these tests
# look at the figures plugin alone, whatever else is installed.
OTHERS = [*BUILTIN_PLUGINS, *(ep.name for ep in entry_points(group="tbhooks") if ep.name != "figures")]
TRAIN_BATCHES = 5  # 40 samples, batch size 8


@pytest.fixture(autouse=True)
def _no_env_switches(monkeypatch):
    monkeypatch.delenv("TBHOOKS_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("TBHOOKS_DISABLE_PLUGIN_AUTOLOAD", raising=False)


def make_data(image_shape: tuple[int, ...] = (1, 6, 6)) -> tuple[TensorDataset, TensorDataset]:
    generator = torch.Generator().manual_seed(0)
    train = TensorDataset(
        torch.randn(40, *image_shape, generator=generator), torch.randint(0, 3, (40,), generator=generator)
    )
    test = TensorDataset(
        torch.randn(12, *image_shape, generator=generator), torch.randint(0, 3, (12,), generator=generator)
    )
    return train, test


def fit(logdir, *, epochs: int = 2, plugin: Figures | None = None, image_shape=(1, 6, 6), **options):
    """A tiny Trainer fit with autoload on (the entry point supplies the plugin unless one is passed)."""
    torch.manual_seed(0)
    train, test = make_data(image_shape)
    features = int(np.prod(image_shape))
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, 3))
    options.setdefault("class_names", NAMES)
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.5),
        nn.CrossEntropyLoss(),
        logdir=logdir,
        device="cpu",
        progress=False,
        autoload=True,
        disable=OTHERS,
        plugins=[plugin] if plugin is not None else [],
        **options,
    )
    trainer.fit(DataLoader(train, batch_size=8), epochs=epochs, eval_loader=DataLoader(test, batch_size=4))
    assert trainer.hooks.faults == {}
    return trainer, model, test


def decode(event) -> np.ndarray:
    """The RGB pixels of an EventAccumulator image event, decoded by PIL."""
    image = Image.open(io.BytesIO(event.encoded_image_string))
    assert (image.width, image.height) == (event.width, event.height)
    return np.asarray(image.convert("RGB"))


def drawn_here(fn, *args, **kwargs) -> np.ndarray:
    """The RGB pixels of ``fn(*args, **kwargs)`` saved as the render worker saves it, in this process."""
    data, _, _ = render_png(fn, args, kwargs)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def render_confusion_matrix(counts, names, dpi=100) -> np.ndarray:
    return drawn_here(confusion_matrix_figure, counts, names, dpi=dpi)


def render_predictions(images, titles, dpi=100) -> np.ndarray:
    return drawn_here(predictions_figure, images, titles, dpi=dpi)


def eval_logits(model: nn.Module, test: TensorDataset) -> torch.Tensor:
    """The final model's outputs on the evaluation set, in the trainer's batches of 4."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in DataLoader(test, batch_size=4)])


# ---------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------


def test_entry_point_is_the_factory_of_the_installed_distribution():
    (point,) = [ep for ep in entry_points(group="tbhooks") if ep.name == "figures"]
    assert point.value == "tbhooks_figures.plugin:plugin"
    assert point.dist is not None and point.dist.name == "tbhooks-figures"


def test_autoload_registers_figures_once_per_run_and_disable_drops_it(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    runs = [tbhooks.attach(model, logdir=tmp_path / name, autoload=True) for name in ("a", "b")]
    try:
        first, second = (hooks.plugin_manager.get_plugin("figures") for hooks in runs)
        assert isinstance(first, Figures) and isinstance(second, Figures)
        assert first is not second  # the factory ran once per run: no state shared between runs
    finally:
        for hooks in runs:
            hooks.close()

    dropped = tbhooks.attach(model, logdir=tmp_path / "c", autoload=True, disable=["figures"])
    monkeypatch.setenv("TBHOOKS_DISABLE_PLUGINS", "figures")
    dropped_by_env = tbhooks.attach(model, logdir=tmp_path / "d", autoload=True)
    monkeypatch.delenv("TBHOOKS_DISABLE_PLUGINS")
    no_autoload = tbhooks.attach(model, logdir=tmp_path / "e", autoload=False)
    try:
        for hooks in (dropped, dropped_by_env, no_autoload):
            assert hooks.plugin_manager.get_plugin("figures") is None
    finally:
        for hooks in (dropped, dropped_by_env, no_autoload):
            hooks.close()


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"num_images": "8"}, TypeError, "num_images"),
        ({"num_images": -1}, ValueError, "num_images"),
        ({"num_images": 1000}, ValueError, "num_images"),
        ({"every_n_evals": 0}, ValueError, "every_n_evals"),
        ({"every_n_evals": 1.5}, TypeError, "every_n_evals"),
        ({"dpi": 5}, ValueError, "dpi"),
        ({"dpi": True}, TypeError, "dpi"),
        ({"confusion_matrix": 1}, TypeError, "confusion_matrix"),
        ({"max_classes": 1}, ValueError, "max_classes"),
    ],
)
def test_constructor_names_the_bad_option(options, error, words):
    with pytest.raises(error, match=rf"Figures\({words}=\.\.\.\)"):
        Figures(**options)


# ---------------------------------------------------------------------------
# the figures of a run, read back
# ---------------------------------------------------------------------------


def test_confusion_matrix_shows_the_counts_of_the_evaluation(tmp_path):
    _, model, test = fit(tmp_path)
    predicted = eval_logits(model, test).argmax(dim=1).tolist()
    expected = np.zeros((3, 3), dtype=np.int64)
    for truth, guess in zip(test.tensors[1].tolist(), predicted, strict=True):
        expected[truth, guess] += 1
    assert expected.sum() == 12
    assert not np.array_equal(expected, expected.T)  # so that a transposed matrix would not pass

    images = read_events(tmp_path).images[CONFUSION_TAG]
    assert [event.step for event in images] == [TRAIN_BATCHES, 2 * TRAIN_BATCHES]  # one per evaluation
    logged = decode(images[-1])
    drawn = render_confusion_matrix(expected, NAMES, dpi=100)
    assert logged.shape == drawn.shape
    np.testing.assert_array_equal(logged, drawn)
    # The comparison can tell counts apart: one sample moved to another cell draws differently.
    moved = expected.copy()
    row = int(np.argmax(moved.sum(axis=1)))
    column = int(np.argmax(moved[row]))
    moved[row, column] -= 1
    moved[row, (column + 1) % 3] += 1
    assert not np.array_equal(logged, render_confusion_matrix(moved, NAMES, dpi=100))


def test_predictions_vs_actuals_shows_the_first_images_with_their_predictions(tmp_path):
    # num_images=5 with evaluation batches of 4: the sample spans two batches.
    _, model, test = fit(tmp_path, plugin=Figures(num_images=5))
    probabilities = torch.softmax(eval_logits(model, test)[:5], dim=1)
    labels = test.tensors[1][:5]
    titles = []
    for row, truth in zip(probabilities.tolist(), labels.tolist(), strict=True):
        guess = max(range(3), key=row.__getitem__)
        colour = "green" if guess == truth else "red"
        titles.append((f"{NAMES[guess]}, {100 * row[guess]:.1f}%\n(label: {NAMES[truth]})", colour))

    images = read_events(tmp_path).images[PREDICTIONS_TAG]
    assert [event.step for event in images] == [TRAIN_BATCHES, 2 * TRAIN_BATCHES]
    logged = decode(images[-1])
    np.testing.assert_array_equal(logged, render_predictions(test.tensors[0][:5].numpy(), titles, dpi=100))
    assert not np.array_equal(logged, render_predictions(test.tensors[0][1:6].numpy(), titles, dpi=100))


def test_every_n_evals_and_class_indices_when_names_do_not_match(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tbhooks")
    _, model, test = fit(tmp_path, plugin=Figures(every_n_evals=2), class_names=["only", "two"])
    events = read_events(tmp_path)
    for tag in (CONFUSION_TAG, PREDICTIONS_TAG):
        assert [event.step for event in events.images[tag]] == [2 * TRAIN_BATCHES]  # the 2nd evaluation only

    # Two names for three classes: the axes show the indices, and one info line says why.
    predicted = eval_logits(model, test).argmax(dim=1).tolist()
    expected = np.zeros((3, 3), dtype=np.int64)
    for truth, guess in zip(test.tensors[1].tolist(), predicted, strict=True):
        expected[truth, guess] += 1
    logged = decode(events.images[CONFUSION_TAG][0])
    np.testing.assert_array_equal(logged, render_confusion_matrix(expected, ["0", "1", "2"], dpi=100))
    notes = [r.getMessage() for r in caplog.records if "class_names has 2 names" in r.getMessage()]
    assert len(notes) == 1


def test_every_n_evals_counts_each_runs_evaluations(tmp_path):
    plugin = Figures(every_n_evals=2)
    for run in ("first", "second"):  # one evaluation each: the second run's is its 1st, not the 2nd overall
        fit(tmp_path / run, epochs=1, plugin=plugin)
        assert CONFUSION_TAG not in read_events(tmp_path / run).images, run


def test_figures_are_drawn_in_the_render_worker_that_fit_start_preloaded(tmp_path, monkeypatch):
    # Every drawing the plugin asks for is wrapped so that the process that draws it records itself in
    # a file named after the tag; the plugin's own function still draws the image.
    facts = tmp_path / "facts"
    facts.mkdir()
    render_image = tbhooks.Run.render_image

    def recording(self, plugin, tag, step, fn, /, *args, **kwargs):
        path = facts / tag.replace("/", "_")
        render_image(self, plugin, tag, step, _figures_helpers.record_process, str(path), fn, *args, **kwargs)

    monkeypatch.setattr(tbhooks.Run, "render_image", recording)
    logdir = tmp_path / "run"
    fit(logdir, epochs=1, plugin=Figures(num_images=2))
    drawn = {path.name: json.loads(path.read_text()) for path in facts.iterdir()}
    assert set(drawn) == {CONFUSION_TAG.replace("/", "_"), PREDICTIONS_TAG.replace("/", "_")}
    (worker,) = {fact["pid"] for fact in drawn.values()}  # the run's one worker drew both
    assert worker != os.getpid()
    for fact in drawn.values():
        assert fact["ppid"] == os.getpid()  # a child of the training process
        assert fact["torch"] is False  # the worker side never imports torch
        assert fact["preloaded"] is True  # on_fit_start had the worker import the figure builders
    images = read_events(logdir).images
    assert {tag: [event.step for event in events] for tag, events in images.items()} == {
        CONFUSION_TAG: [TRAIN_BATCHES],
        PREDICTIONS_TAG: [TRAIN_BATCHES],
    }


# ---------------------------------------------------------------------------
# inputs the plugin cannot draw
# ---------------------------------------------------------------------------


def test_non_image_inputs_skip_the_predictions_figure_with_one_info_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tbhooks")
    fit(tmp_path, image_shape=(5,))  # feature vectors [N, 5]: classification, but not images
    images = read_events(tmp_path).images
    assert PREDICTIONS_TAG not in images
    assert len(images[CONFUSION_TAG]) == 2  # the confusion matrix needs no images
    notes = [r.getMessage() for r in caplog.records if PREDICTIONS_TAG in r.getMessage()]
    assert len(notes) == 1 and "not images" in notes[0]  # once, though two evaluations ran


def test_regression_outputs_write_no_figure_and_one_info_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tbhooks")
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 1, 4, 4), torch.randn(8, 1))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.MSELoss(),
        logdir=tmp_path,
        device="cpu",
        progress=False,
        autoload=True,
        disable=OTHERS,
    )
    trainer.fit(DataLoader(data, batch_size=4), epochs=2, eval_loader=DataLoader(data, batch_size=4))
    assert trainer.hooks.faults == {}
    assert read_events(tmp_path).images == {}
    notes = [r.getMessage() for r in caplog.records if "figures skipped" in r.getMessage()]
    assert len(notes) == 1
