"""The embeddings plugin: the projector's files read back and checked row by row."""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
from torch import nn

import tbhooks
from tbhooks.default_plugins import common
from tbhooks.default_plugins.embeddings import Embeddings, class_quota, pick
from tbhooks.default_plugins.projector import tsv_label
from tbhooks.manager import BUILTIN_PLUGINS

OTHERS = [name for name in BUILTIN_PLUGINS if name != "embeddings"]


def make_model() -> nn.Module:
    # named modules: "0" Flatten, "1" Linear(64 -> 12), "2" ReLU, "3" Linear(12 -> 3)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 3))


def unbalanced_set(counts=(25, 10, 5), seed=0):
    """Images [N, 1, 8, 8] in [0, 1], labels in loader order with the given class counts, interleaved."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    images = torch.rand(len(labels), 1, 8, 8, generator=generator)
    return images, labels


def run_evals(tmp_path, images, labels, *, plugin, evals=1, batch=8, class_names=None, model=None, train_steps=3):
    """A hand-written loop: a few training steps, then ``evals`` evaluations."""
    model = model or make_model()
    with tbhooks.attach(
        model, logdir=tmp_path, plugins=[plugin], disable=OTHERS, autoload=False, class_names=class_names
    ) as hooks:
        for _ in range(evals):
            hooks.epoch_start()
            for _ in range(train_steps):
                hooks.batch_start()
                hooks.batch_end(images[:4], labels[:4], model(images[:4]))
            hooks.epoch_end()
            model.eval()
            hooks.eval_start()
            with torch.no_grad():
                for x, y in zip(images.split(batch), labels.split(batch), strict=True):
                    hooks.eval_batch(x, y, model(x))
            hooks.eval_end()
            model.train()
        assert hooks.faults == {}
    return model


def projector(logdir: Path) -> ProjectorConfig:
    config = ProjectorConfig()
    text_format.Parse((logdir / "projector_config.pbtxt").read_text(encoding="utf-8"), config)
    return config


def read_embedding(logdir: Path, info) -> dict:
    tensors = np.loadtxt(logdir / info.tensor_path, delimiter="\t", ndmin=2)
    out = {"tensors": tensors, "metadata": None, "sprite": None}
    if info.metadata_path:
        text = (logdir / info.metadata_path).read_bytes().decode("utf-8")
        assert text.endswith("\n")
        out["metadata"] = text[:-1].split("\n")
    if info.sprite.image_path:
        out["sprite"] = np.asarray(Image.open(logdir / info.sprite.image_path).convert("RGB"))
    return out


def round_robin(labels: list[int], limit: int) -> Counter:
    """The expected per-class counts, by dealing one point per class in turns until ``limit``."""
    available = Counter(labels)
    taken: Counter = Counter()
    total = 0
    while total < min(limit, len(labels)):
        for c in sorted(available):
            if taken[c] < available[c] and total < limit:
                taken[c] += 1
                total += 1
    return taken


def test_default_layer_is_input_of_last_linear(tmp_path):
    images, labels = unbalanced_set()
    model = run_evals(tmp_path, images, labels, plugin=Embeddings(max_points=24), class_names=["cat", "dog", "owl"])

    config = projector(tmp_path)
    [info] = config.embeddings
    assert info.tensor_name == "embeddings/3/step3:00003"
    got = read_embedding(tmp_path, info)
    tensors, metadata = got["tensors"], got["metadata"]

    # N = min(max_points, eval size), spread evenly: 25/10/5 points and 24 slots give 10/9/5
    assert tensors.shape == (24, 12)  # the input of Linear(12 -> 3)
    assert len(metadata) == 24
    assert Counter(metadata) == {"cat": 10, "dog": 9, "owl": 5}
    expected = round_robin(labels.tolist(), 24)
    assert Counter(metadata) == {["cat", "dog", "owl"][c]: n for c, n in expected.items()}

    # the rows are the first points of each class, in loader order, with their features
    chosen = pick(labels.tolist(), dict(expected))
    with torch.no_grad():
        features = model[2](model[1](model[0](images)))  # what Linear "3" receives
    np.testing.assert_allclose(tensors, features[chosen].numpy(), rtol=1e-5, atol=1e-6)
    assert metadata == [["cat", "dog", "owl"][labels[i]] for i in chosen]

    # the sprite: ceil(sqrt(24)) = 5 thumbnails of 8 px a row, square
    sprite = got["sprite"]
    assert sprite.shape == (40, 40, 3)
    assert list(info.sprite.single_image_dim) == [8, 8]
    for slot, index in enumerate(chosen[:6]):
        row, col = divmod(slot, 5)
        thumb = sprite[row * 8 : row * 8 + 8, col * 8 : col * 8 + 8, 0].astype(int)
        expected_px = (images[index, 0] * 255).round().numpy().astype(int)
        assert np.abs(thumb - expected_px).max() <= 1, slot  # the writer truncates x * 255


def test_compaction_keeps_the_first_points_of_each_class(tmp_path):
    """A larger evaluation than 2 * max_points: the collected points are trimmed as they come."""
    counts = (60, 5, 30, 2, 23)
    images, labels = unbalanced_set(counts, seed=3)
    plugin = Embeddings(source="inputs", max_points=13, sprites=False)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    run_evals(tmp_path, images, labels, plugin=plugin, batch=7, model=model)
    [info] = projector(tmp_path).embeddings
    got = read_embedding(tmp_path, info)
    expected = round_robin(labels.tolist(), 13)
    assert sum(expected.values()) == 13
    assert Counter(int(m) for m in got["metadata"]) == expected
    chosen = pick(labels.tolist(), dict(expected))
    np.testing.assert_allclose(got["tensors"], images.reshape(len(images), -1)[chosen].numpy(), rtol=1e-6)
    assert got["sprite"] is None


def test_source_inputs_flattens_raw_inputs(tmp_path):
    images, labels = unbalanced_set((6, 6))
    run_evals(tmp_path, images, labels, plugin=Embeddings(source="inputs"), batch=5)
    [info] = projector(tmp_path).embeddings
    assert info.tensor_name.startswith("embeddings/inputs/step3")
    got = read_embedding(tmp_path, info)
    assert got["tensors"].shape == (12, 64)
    np.testing.assert_allclose(got["tensors"], images.reshape(12, 64).numpy(), rtol=1e-6)
    assert got["metadata"] == [str(int(v)) for v in labels]  # no class names: the label numbers
    assert got["sprite"].shape == (32, 32, 3)  # ceil(sqrt(12)) = 4 thumbnails a row


def test_named_layer(tmp_path):
    images, labels = unbalanced_set((4, 4))
    run_evals(tmp_path, images, labels, plugin=Embeddings(layer="1"))
    [info] = projector(tmp_path).embeddings
    assert info.tensor_name.startswith("embeddings/1/step")
    assert read_embedding(tmp_path, info)["tensors"].shape == (8, 64)  # the input of Linear(64 -> 12)


def test_two_evaluations_give_two_embeddings(tmp_path, capsys):
    images, labels = unbalanced_set((5, 5, 5))
    run_evals(tmp_path, images, labels, plugin=Embeddings(), evals=2)
    config = projector(tmp_path)
    assert [e.tensor_name for e in config.embeddings] == ["embeddings/3/step3:00003", "embeddings/3/step6:00006"]
    for info in config.embeddings:
        got = read_embedding(tmp_path, info)
        assert got["tensors"].shape == (15, 12)
        assert len(got["metadata"]) == 15
    assert "exists" not in capsys.readouterr().out


def test_same_step_twice_and_a_second_run_keep_every_embedding(tmp_path, capsys):
    images, labels = unbalanced_set((3, 3))
    run_evals(tmp_path, images, labels, plugin=Embeddings(), evals=1)
    # a second run on the same directory, evaluating at the same step twice (no training in between)
    run_evals(tmp_path, images, labels, plugin=Embeddings(), evals=2, train_steps=0)
    names = [e.tensor_name for e in projector(tmp_path).embeddings]
    assert names == ["embeddings/3/step3:00003", "embeddings/3/step0:00000", "embeddings/3/step0_2:00000"]
    for info in projector(tmp_path).embeddings:
        assert (tmp_path / info.tensor_path).is_file()
    assert "Embedding dir exists" not in capsys.readouterr().out


def test_every_n_evals(tmp_path):
    images, labels = unbalanced_set((3, 3))
    run_evals(tmp_path, images, labels, plugin=Embeddings(every_n_evals=2), evals=3, train_steps=1)
    assert [e.tensor_name for e in projector(tmp_path).embeddings] == ["embeddings/3/step2:00002"]


def test_metadata_is_escaped_for_the_tsv(tmp_path):
    images, labels = unbalanced_set((2, 2, 2, 2))
    names = ["tab\there", "new\nline", "café 日本 🦉", "  "]
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    run_evals(tmp_path, images, labels, plugin=Embeddings(), class_names=names, model=model)
    [info] = projector(tmp_path).embeddings
    got = read_embedding(tmp_path, info)
    assert len(got["metadata"]) == 8 == got["tensors"].shape[0]
    expected = {0: "tab\\there", 1: "new\\nline", 2: "café 日本 🦉", 3: "'  '"}
    assert got["metadata"] == [expected[int(c)] for c in labels]
    assert not any("\t" in line or "\r" in line for line in got["metadata"])


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("plain", "plain"),
        ("a\tb", "a\\tb"),
        ("a\nb\r\nc", "a\\nb\\r\\nc"),
        ("bell\x07", "bell\\x07"),
        ("nel\x85", "nel\\x85"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("lone\ud800", "lone\\ud800"),
        ("ünïcödé 中文 🦉", "ünïcödé 中文 🦉"),
        ("", "''"),
        (" \t", " \\t"),  # not blank once escaped
        ("   ", "'   '"),
        (7, "7"),
    ],
)
def test_tsv_label(raw, safe):
    assert tsv_label(raw) == safe
    assert "\n" not in tsv_label(raw) and "\t" not in tsv_label(raw)
    tsv_label(raw).encode("utf-8")  # always writable as UTF-8


@pytest.mark.parametrize(
    ("counts", "limit"),
    [((25, 10, 5), 24), ((1, 1, 1), 10), ((100,), 7), ((3, 50, 3, 50), 40), ((9, 9, 9), 10)],
)
def test_class_quota_matches_round_robin(counts, limit):
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    quota = class_quota(labels, limit)
    assert sum(quota.values()) == min(limit, len(labels))
    assert Counter(quota) == round_robin(labels, limit)


def test_sprite_never_exceeds_the_limit(tmp_path, monkeypatch):
    # The real limit (8192 px) needs huge images to reach; the arithmetic is the same at 30 px.
    monkeypatch.setattr(common, "SPRITE_MAX_PX", 30)
    images, labels = unbalanced_set((12, 12))
    run_evals(tmp_path, images, labels, plugin=Embeddings(max_points=24))
    [info] = projector(tmp_path).embeddings
    sprite = read_embedding(tmp_path, info)["sprite"]
    # ceil(sqrt(24)) = 5 a row, 30 // 5 = 6 px thumbnails (from 8 px)
    assert list(info.sprite.single_image_dim) == [6, 6]
    assert sprite.shape == (30, 30, 3)


def test_thumbnail_side_at_the_real_limit():
    assert common.SPRITE_MAX_PX == 8192
    assert common.thumbnail_side(1000, 224) == 224  # 32 * 224 = 7168 fits
    assert common.thumbnail_side(1000, 300) == 256  # 32 * 300 would be 9600
    assert common.thumbnail_side(100_000, 64) == 25  # 317 a row
    for count, side in ((1000, 300), (100_000, 64), (5000, 512), (1, 10_000)):
        assert math.ceil(math.sqrt(count)) * common.thumbnail_side(count, side) <= 8192


def test_non_square_images_are_padded_square(tmp_path):
    torch.manual_seed(0)
    images = torch.rand(5, 3, 4, 10)
    labels = torch.tensor([0, 1, 0, 1, 0])
    model = nn.Sequential(nn.Flatten(), nn.Linear(120, 2))
    run_evals(tmp_path, images, labels, plugin=Embeddings(), model=model)
    [info] = projector(tmp_path).embeddings
    got = read_embedding(tmp_path, info)
    assert list(info.sprite.single_image_dim) == [10, 10]
    assert got["sprite"].shape == (30, 30, 3)
    # image 0 sits in the middle rows of its square cell, black above and below
    assert (got["sprite"][0:3, 0:10] == 0).all()
    np.testing.assert_allclose(
        got["sprite"][3:7, 0:10].astype(int), (images[0].permute(1, 2, 0) * 255).round().numpy(), atol=1
    )


def test_unknown_layer_is_a_clear_error(tmp_path):
    images, labels = unbalanced_set((2, 2))
    with pytest.raises(ValueError, match=r"Embeddings\(layer='nope'\): the model has no such submodule; known: ''"):
        with tbhooks.attach(
            make_model(),
            logdir=tmp_path / "strict",
            plugins=[Embeddings(layer="nope")],
            disable=OTHERS,
            autoload=False,
            strict=True,
        ):
            pass
    # without strict the plugin is disabled with that message and the run goes on
    with pytest.warns(tbhooks.PluginFaultWarning, match=r"Embeddings\(layer='nope'\)"):
        with tbhooks.attach(
            make_model(),
            logdir=tmp_path / "lenient",
            plugins=[Embeddings(layer="nope")],
            disable=OTHERS,
            autoload=False,
        ) as hooks:
            hooks.eval_start()
            hooks.eval_batch(images, labels, torch.zeros(4, 3))
            hooks.eval_end()
    assert not (tmp_path / "lenient" / "projector_config.pbtxt").exists()


def test_non_image_inputs_give_no_sprite_and_float_targets_no_labels(tmp_path):
    features = torch.randn(10, 6)
    targets = torch.randn(10)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))
    run_evals(tmp_path, features, targets, plugin=Embeddings(max_points=7), model=model, batch=4)
    [info] = projector(tmp_path).embeddings
    got = read_embedding(tmp_path, info)
    assert got["tensors"].shape == (7, 5)  # the first max_points points
    assert got["metadata"] is None and got["sprite"] is None


def test_model_without_linear_is_skipped_with_info(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tbhooks")
    images, labels = unbalanced_set((2, 2))
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    run_evals(tmp_path, images, labels, plugin=Embeddings(), model=model)
    assert not (tmp_path / "projector_config.pbtxt").exists()
    assert any("no nn.Linear" in r.getMessage() for r in caplog.records)


def test_one_dimensional_features_skipped(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tbhooks")
    images, labels = torch.randn(6, 1), torch.tensor([0, 1, 0, 1, 0, 1])
    model = nn.Sequential(nn.Linear(1, 2))
    run_evals(tmp_path, images, labels, plugin=Embeddings(), model=model)
    assert not (tmp_path / "projector_config.pbtxt").exists()
    assert any("one dimension" in r.getMessage() for r in caplog.records)


def test_trainer_end_to_end(tmp_path):
    images, labels = unbalanced_set((8, 8, 8))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=8)
    model = make_model()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        device="cpu",
        progress=False,
        plugins=[Embeddings(max_points=12)],
        disable=OTHERS,
        autoload=False,
        class_names=["a", "b", "c"],
    )
    trainer.fit(loader, epochs=2, eval_loader=loader)
    config = projector(tmp_path)
    assert [e.tensor_name for e in config.embeddings] == ["embeddings/3/step3:00003", "embeddings/3/step6:00006"]
    for info in config.embeddings:
        got = read_embedding(tmp_path, info)
        assert Counter(got["metadata"]) == {"a": 4, "b": 4, "c": 4}
        assert got["tensors"].shape == (12, 12)
        assert got["sprite"].shape == (32, 32, 3)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"layer": 3}, TypeError, r"Embeddings\(layer="),
        ({"source": "outputs"}, ValueError, r"Embeddings\(source="),
        ({"source": "inputs", "layer": "fc"}, ValueError, r"Embeddings\(layer="),
        ({"max_points": 0}, ValueError, r"Embeddings\(max_points="),
        ({"max_points": 100_001}, ValueError, r"Embeddings\(max_points="),
        ({"max_points": 10.0}, TypeError, r"Embeddings\(max_points="),
        ({"every_n_evals": 0}, ValueError, r"Embeddings\(every_n_evals="),
        ({"sprites": 1}, TypeError, r"Embeddings\(sprites="),
        ({"mean": "0.5"}, TypeError, r"Embeddings\(mean="),
        ({"std": [0.0]}, ValueError, r"Embeddings\(std="),
    ],
)
def test_options_validated(options, error, match):
    with pytest.raises(error, match=match):
        Embeddings(**options)


def test_defaults():
    plugin = Embeddings()
    assert plugin.name == "embeddings"
    assert (plugin.layer, plugin.source, plugin.max_points, plugin.every_n_evals, plugin.sprites) == (
        None,
        "layer",
        1000,
        1,
        True,
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_files_are_those_add_embedding_writes(tmp_path, channels):
    """write_projector_files against SummaryWriter.add_embedding itself, file by file."""
    from torch.utils.tensorboard import SummaryWriter

    from tbhooks.default_plugins.projector import write_projector_files

    generator = torch.Generator().manual_seed(3)
    features = torch.randn(11, 5, generator=generator) * 1e3  # float32 of every magnitude, negative too
    features[0, 0] = 1e-30
    thumbs = torch.randint(0, 256, (11, channels, 4, 4), dtype=torch.uint8, generator=generator)
    labels = ["cat", "dog", "a b"] * 3 + ["owl", "x%/y"]
    tag, step = "embeddings/x%/step7", 7

    theirs = SummaryWriter(tmp_path / "theirs")
    theirs.add_embedding(features, metadata=labels, label_img=thumbs.float() / 255, global_step=step, tag=tag)
    theirs.close()
    write_projector_files(str(tmp_path / "ours"), features.numpy(), labels, thumbs.numpy(), step, tag)

    [expected] = projector(tmp_path / "theirs").embeddings
    [info] = projector(tmp_path / "ours").embeddings
    assert info == expected  # names, paths, sprite size: the projector finds the same files
    want, got = read_embedding(tmp_path / "theirs", expected), read_embedding(tmp_path / "ours", info)
    assert np.array_equal(got["tensors"].astype(np.float32), features.numpy())  # every float32 back exactly
    assert np.array_equal(want["tensors"].astype(np.float32), features.numpy())  # theirs too
    assert got["metadata"] == want["metadata"] == labels
    assert got["sprite"].shape == want["sprite"].shape == (16, 16, 3)
    # add_embedding truncates (x / 255) * 255, which can lose one; the thumbnails are written as they are.
    assert np.abs(got["sprite"].astype(int) - want["sprite"].astype(int)).max() <= 1
    grid = got["sprite"][:12].reshape(3, 4, 4, 4, 3).transpose(0, 2, 1, 3, 4).reshape(11 + 1, 4, 4, 3)[:11]
    assert np.array_equal(grid, thumbs.permute(0, 2, 3, 1).expand(11, 4, 4, 3).numpy())
    assert not got["sprite"][12:].any()  # the square's unused rows stay black
