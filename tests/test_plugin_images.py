"""The images plugin: grids read back from the event file, decoded, and checked pixel by pixel."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import tbhooks
from tbhooks.default_plugins.images import Images
from tbhooks.manager import BUILTIN_PLUGINS
from tbhooks.testing import HookRecorder, read_events

OTHERS = [name for name in BUILTIN_PLUGINS if name != "images"]
PAD = 2  # torchvision.utils.make_grid's default padding


def train(tmp_path, batches, *, plugin, epochs=1, runs=None):
    """A hand-written loop over fixed input batches; the model's outputs are irrelevant here."""
    model = nn.Linear(2, 2)
    with tbhooks.attach(model, logdir=tmp_path, plugins=[plugin], disable=OTHERS, autoload=False) as hooks:
        if runs is not None:
            runs.append(hooks.run)
        for _ in range(epochs):
            hooks.epoch_start()
            for inputs in batches:
                hooks.batch_start()
                hooks.batch_end(inputs, torch.zeros(2, dtype=torch.long), torch.zeros(2, 2))
            hooks.epoch_end()
        assert hooks.faults == {}
    return read_events(tmp_path)


def decode(event) -> np.ndarray:
    """The PNG of an image event as an [H, W, C] uint8 array."""
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


def cell(grid: np.ndarray, index: int, nrow: int, size: tuple[int, int]) -> np.ndarray:
    """The pixels of image ``index`` in a make_grid layout."""
    h, w = size
    row, col = divmod(index, nrow)
    top, left = PAD + row * (h + PAD), PAD + col * (w + PAD)
    return grid[top : top + h, left : left + w]


def grid_shape(count: int, nrow: int, size: tuple[int, int]) -> tuple[int, int]:
    cols = min(nrow, count)
    rows = -(-count // cols)
    return rows * (size[0] + PAD) + PAD, cols * (size[1] + PAD) + PAD


def test_unnormalized_three_channel_grid(tmp_path):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    shown = torch.tensor([0.2, 0.6, 0.8])  # what each channel should display
    normalized = ((shown - torch.tensor(mean)) / torch.tensor(std)).reshape(1, 3, 1, 1)
    batch = normalized.expand(5, 3, 8, 6).contiguous()

    events = train(tmp_path, [batch], plugin=Images(mean=mean, std=std, nrow=3))

    [event] = events.images["images/inputs"]
    assert event.step == 1
    assert (event.height, event.width) == grid_shape(5, 3, (8, 6)) == (22, 26)
    pixels = decode(event)
    assert pixels.shape == (22, 26, 3)
    for index in range(5):
        assert (cell(pixels, index, 3, (8, 6)) == [51, 153, 204]).all(), index
    assert (pixels[0, :] == 0).all() and (pixels[:, 0] == 0).all()  # padding
    assert (cell(pixels, 5, 3, (8, 6)) == 0).all()  # the empty sixth slot


def test_one_channel_and_hw_inputs(tmp_path):
    torch.manual_seed(0)
    images = torch.rand(4, 1, 7, 7)
    for sub, batch in (("nchw", images), ("nhw", images[:, 0])):
        events = train(tmp_path / sub, [batch], plugin=Images(nrow=2))
        [event] = events.images["images/inputs"]
        assert (event.height, event.width) == grid_shape(4, 2, (7, 7))
        pixels = decode(event)
        for index in range(4):
            expected = (images[index, 0] * 255).round().to(torch.uint8).numpy()
            got = cell(pixels, index, 2, (7, 7))
            for channel in range(3):  # grey shown as equal R, G, B
                np.testing.assert_array_equal(got[..., channel], expected)


def test_uint8_inputs_shown_unscaled(tmp_path):
    torch.manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 5, 5), dtype=torch.uint8)
    # mean/std describe float inputs; uint8 images must be shown as they are
    events = train(tmp_path, [images], plugin=Images(mean=[0.5], std=[0.1]))
    pixels = decode(events.images["images/inputs"][0])
    for index in range(3):
        np.testing.assert_array_equal(cell(pixels, index, 8, (5, 5)), images[index].permute(1, 2, 0).numpy())


def test_float_out_of_range_is_clamped(tmp_path):
    images = torch.tensor([-3.0, 0.5, 7.0]).reshape(3, 1, 1, 1).expand(3, 1, 4, 4)
    pixels = decode(train(tmp_path, [images], plugin=Images()).images["images/inputs"][0])
    assert [int(cell(pixels, i, 8, (4, 4))[0, 0, 0]) for i in range(3)] == [0, 128, 255]


def test_max_images_limits_the_grid(tmp_path):
    events = train(tmp_path, [torch.rand(40, 3, 4, 4)], plugin=Images(max_images=5, nrow=8))
    event = events.images["images/inputs"][0]
    assert (event.height, event.width) == grid_shape(5, 8, (4, 4))


def test_only_first_batch_without_every_n_epochs(tmp_path):
    batches = [torch.full((2, 1, 4, 4), value) for value in (0.2, 0.4, 0.6)]
    events = train(tmp_path, batches, plugin=Images(), epochs=3)
    [event] = events.images["images/inputs"]
    assert event.step == 1
    assert cell(decode(event), 0, 8, (4, 4))[0, 0, 0] == 51  # the first batch


def test_every_n_epochs_uses_the_first_batch_of_every_nth_epoch(tmp_path):
    batches = [torch.full((2, 1, 4, 4), value) for value in (0.2, 0.4, 0.6)]
    events = train(tmp_path, batches, plugin=Images(every_n_epochs=2), epochs=5)
    got = events.images["images/inputs"]
    # The first batches of epochs 0, 2 and 4 (steps 1, 7 and 13), each showing 0.2 * 255.
    assert [e.step for e in got] == [1, 7, 13]
    assert [int(cell(decode(e), 0, 8, (4, 4))[0, 0, 0]) for e in got] == [51, 51, 51]


def test_on_batch_end_reaches_the_plugin_on_its_grid_steps_only(tmp_path):
    plugin = Images(every_n_epochs=2)
    model = nn.Linear(2, 2)
    with tbhooks.attach(model, logdir=tmp_path, plugins=[plugin], disable=OTHERS, autoload=False) as hooks:
        recorder = HookRecorder(hooks)
        for _ in range(3):
            hooks.epoch_start()
            for _ in range(3):
                hooks.batch_end(torch.rand(2, 1, 4, 4), None, torch.zeros(2, 2))
            hooks.epoch_end()
    assert [kwargs["step"] for kwargs in recorder.of("on_batch_end")] == [1, 7]
    assert [e.step for e in read_events(tmp_path).images["images/inputs"]] == [1, 7]


@pytest.mark.parametrize(
    "inputs",
    [
        {"pixels": torch.rand(2, 3, 4, 4)},
        torch.rand(4, 10),
        torch.rand(2, 4, 8, 8),
        torch.randint(0, 10, (2, 5, 5)),
        (torch.rand(2, 3, 4, 4), torch.rand(2, 3)),
    ],
    ids=["dict", "features", "four-channels", "int64", "tuple"],
)
def test_non_image_inputs_skipped_with_one_info_line(tmp_path, caplog, inputs):
    caplog.set_level(logging.INFO, logger="tbhooks")
    events = train(tmp_path, [inputs, inputs], plugin=Images(every_n_epochs=1), epochs=2)
    assert events.images == {}
    lines = [r.getMessage() for r in caplog.records if "images skipped" in r.getMessage()]
    assert len(lines) == 1, lines


def test_mismatched_mean_warns_once_and_still_logs(tmp_path):
    with pytest.warns(tbhooks.TbhooksWarning, match="do not match images with 1 channel"):
        events = train(tmp_path, [torch.full((2, 1, 4, 4), 0.6)], plugin=Images(mean=(0.1, 0.2, 0.3)))
    assert cell(decode(events.images["images/inputs"][0]), 0, 8, (4, 4))[0, 0, 0] == 153


def test_trainer_logs_the_first_training_batch(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(12, 1, 8, 8)
    y = torch.randint(0, 2, (12,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 2))
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        device="cpu",
        progress=False,
        plugins=[Images(nrow=4)],
        disable=OTHERS,
        autoload=False,
    )
    trainer.fit(loader, epochs=2)
    [event] = read_events(tmp_path).images["images/inputs"]
    pixels = decode(event)
    assert (event.height, event.width) == grid_shape(4, 4, (8, 8))
    for index in range(4):
        expected = (x[index, 0] * 255).round().to(torch.uint8).numpy()
        np.testing.assert_array_equal(cell(pixels, index, 4, (8, 8))[..., 0], expected)


def test_only_rank_zero_works(tmp_path):
    model = nn.Linear(2, 2)
    plugin = Images(every_n_epochs=1)
    with tbhooks.attach(model, logdir=tmp_path, plugins=[plugin], disable=OTHERS, autoload=False) as hooks:
        hooks.run.rank = 1
        hooks.epoch_start()
        hooks.batch_end(torch.rand(2, 1, 4, 4), None, torch.zeros(2, 2))
        hooks.epoch_end()
    assert read_events(tmp_path).images == {}


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_images": 0}, ValueError, r"Images\(max_images="),
        ({"max_images": 2.0}, TypeError, r"Images\(max_images="),
        ({"every_n_epochs": -1}, ValueError, r"Images\(every_n_epochs="),
        ({"every_n_epochs": True}, TypeError, r"Images\(every_n_epochs="),
        ({"nrow": 0}, ValueError, r"Images\(nrow="),
        ({"mean": 0.5}, TypeError, r"Images\(mean="),
        ({"mean": "rgb"}, TypeError, r"Images\(mean="),
        ({"mean": []}, ValueError, r"Images\(mean="),
        ({"mean": [0.5, "x"]}, TypeError, r"Images\(mean="),
        ({"mean": [float("nan")]}, ValueError, r"Images\(mean="),
        ({"std": [0.5, 0.0]}, ValueError, r"Images\(std="),
        ({"std": [-1.0]}, ValueError, r"Images\(std="),
    ],
)
def test_options_validated(options, error, match):
    with pytest.raises(error, match=match):
        Images(**options)


def test_defaults():
    plugin = Images()
    assert plugin.name == "images"
    assert (plugin.max_images, plugin.every_n_epochs, plugin.nrow) == (16, 0, 8)
    assert plugin.mean is None and plugin.std is None
    assert Images(mean=[0.5, 0.5, 0.5], std=(1, 2, 3)).std == (1.0, 2.0, 3.0)
