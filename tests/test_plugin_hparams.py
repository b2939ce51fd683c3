"""The hparams plugin: hyper-parameters and final metrics in the run's own event file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch import nn

import tbhooks
from tbhooks.default_plugins.hparams import HParams, hparam_value, hparams_table
from tbhooks.manager import BUILTIN_PLUGINS
from tbhooks.testing import read_events

OTHERS = [name for name in BUILTIN_PLUGINS if name != "hparams"]


def plugin_data(logdir: Path) -> dict[str, HParamsPluginData]:
    """tag -> decoded hparams plugin data, as TensorBoard's EventAccumulator reads it."""
    content = read_events(logdir).accumulator.PluginTagToContent("hparams")
    return {tag: HParamsPluginData.FromString(data) for tag, data in content.items()}


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 4, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return x, y


def make_trainer(logdir: Path, **options: object) -> tuple[tbhooks.Trainer, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = tbhooks.Trainer(
        model,
        optimizer,
        nn.functional.cross_entropy,
        logdir=logdir,
        device="cpu",
        progress=False,
        disable=OTHERS,
        autoload=False,
        **options,
    )
    return trainer, model


def loaders() -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    dataset = torch.utils.data.TensorDataset(*data())
    return torch.utils.data.DataLoader(dataset, batch_size=8), torch.utils.data.DataLoader(dataset, batch_size=16)


def test_hparams_metrics_and_texts_in_the_runs_own_file(tmp_path: Path) -> None:
    logdir = tmp_path / "run1"
    extra = {"dropout": 0.1, "use_bn": True, "layers": [4, 8]}
    trainer, model = make_trainer(logdir, hparams=extra)
    train_loader, eval_loader = loaders()
    metrics = trainer.fit(train_loader, epochs=2, eval_loader=eval_loader)

    # Independent evaluation of the trained model.
    x, y = data()
    with torch.no_grad():
        logits = model(x)
    accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    loss = nn.functional.cross_entropy(logits, y).item()
    assert metrics["accuracy"] == pytest.approx(accuracy)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters == 4 * 8 + 8 + 8 * 3 + 3

    # No sub-run: the log directory holds event files only.
    assert [p for p in logdir.iterdir() if p.is_dir()] == []
    assert all(p.name.startswith("events.out.tfevents.") for p in logdir.iterdir())

    found = plugin_data(logdir)
    assert set(found) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = found["_hparams_/session_start_info"].session_start_info.hparams
    assert {name: start[name].WhichOneof("kind") for name in start} == {
        "model": "string_value",
        "optimizer": "string_value",
        "lr": "number_value",
        "momentum": "number_value",
        "epochs": "number_value",
        "batch_size": "number_value",
        "parameters": "number_value",
        "dropout": "number_value",
        "use_bn": "bool_value",
        "layers": "string_value",
    }
    assert start["model"].string_value == "Sequential"
    assert start["optimizer"].string_value == "SGD"
    assert (start["lr"].number_value, start["momentum"].number_value) == (0.05, 0.9)
    assert (start["epochs"].number_value, start["batch_size"].number_value) == (2, 8)
    assert start["parameters"].number_value == parameters
    assert (start["dropout"].number_value, start["use_bn"].bool_value) == (0.1, True)
    assert start["layers"].string_value == "[4, 8]"

    experiment = found["_hparams_/experiment"].experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"hparams/eval_loss", "hparams/eval_accuracy"}
    assert {m.name.group for m in experiment.metric_infos} == {""}  # this run, not a sub-run
    types = {info.name: api_pb2.DataType.Name(info.type) for info in experiment.hparam_infos}
    assert types["use_bn"] == "DATA_TYPE_BOOL" and types["lr"] == "DATA_TYPE_FLOAT64"
    assert types["model"] == "DATA_TYPE_STRING" and set(types) == set(start)
    assert found["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_SUCCESS

    events = read_events(logdir)
    steps = 2 * len(train_loader)
    assert [(s.step, s.value) for s in events.scalars["hparams/eval_accuracy"]] == [(steps, pytest.approx(accuracy))]
    assert [(s.step, s.value) for s in events.scalars["hparams/eval_loss"]] == [(steps, pytest.approx(loss, rel=1e-5))]

    (table,) = events.texts["hparams/summary/text_summary"]
    assert table.splitlines()[:2] == ["| hyper-parameter | value |", "|---|---|"]
    assert f"| parameters | {parameters} |" in table
    assert "| lr | 0.05 |" in table and "| use_bn | True |" in table and "| layers | [4, 8] |" in table
    (summary,) = events.texts["hparams/model/text_summary"]
    assert f"**Sequential**: {parameters} parameters ({parameters} trainable, 0 frozen)" in summary
    assert "```\nSequential(\n  (0): Linear(in_features=4, out_features=8, bias=True)" in summary


# TensorBoard's vendored bleach warns about its vendored html5lib when the hparams plugin is imported.
@pytest.mark.filterwarnings("ignore:html5lib's sanitizer is deprecated:DeprecationWarning")
def test_tensorboards_hparams_backend_lists_the_run_as_a_session(tmp_path: Path) -> None:
    """TensorBoard's own HParams plugin backend, on the log directory's parent, sees one session."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin, list_session_groups

    trainer, _ = make_trainer(tmp_path / "run1", hparams={"seed": 7})
    train_loader, eval_loader = loaders()
    metrics = trainer.fit(train_loader, epochs=1, eval_loader=eval_loader)

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(tmp_path))
    plugin = hparams_plugin.HParamsPlugin(
        base_plugin.TBContext(logdir=str(tmp_path), multiplexer=multiplexer, data_provider=provider)
    )
    request = api_pb2.ListSessionGroupsRequest(
        allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_UNKNOWN],
        start_index=0,
        slice_size=10,
    )
    response = list_session_groups.Handler(context.RequestContext(), plugin._context, "", request).run()
    (group,) = response.session_groups
    (session,) = group.sessions
    assert session.name == "run1" and session.status == api_pb2.STATUS_SUCCESS
    assert group.hparams["seed"].number_value == 7
    assert {m.name.tag: m.value for m in session.metric_values} == {
        "hparams/eval_loss": pytest.approx(metrics["loss"]),
        "hparams/eval_accuracy": pytest.approx(metrics["accuracy"]),
    }


def test_fit_without_evaluation_has_no_metrics(tmp_path: Path) -> None:
    trainer, _ = make_trainer(tmp_path)
    train_loader, _ = loaders()
    assert trainer.fit(train_loader, epochs=1) == {}
    found = plugin_data(tmp_path)
    assert list(found["_hparams_/experiment"].experiment.metric_infos) == []
    names = {info.name for info in found["_hparams_/experiment"].experiment.hparam_infos}
    assert names == {"model", "optimizer", "lr", "momentum", "epochs", "batch_size", "parameters"}  # the Trainer's
    assert found["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_SUCCESS
    assert not [tag for tag in read_events(tmp_path).scalars if tag.startswith("hparams/")]
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


def test_failed_fit_ends_the_session_as_failure_with_the_last_metrics(tmp_path: Path) -> None:
    model = nn.Linear(4, 3)
    x, y = data()
    with pytest.raises(RuntimeError, match="boom"):
        with tbhooks.attach(
            model, logdir=tmp_path, hparams={"lr": 0.1}, disable=OTHERS, autoload=False, plugins=[HParams()]
        ) as hooks:
            hooks.epoch_start()
            hooks.batch_start()
            hooks.batch_end(x, y, model(x))
            hooks.epoch_end()
            hooks.eval_start()
            with torch.no_grad():
                outputs = model(x)
                hooks.eval_batch(x, y, outputs, nn.functional.cross_entropy(outputs, y))
            metrics = hooks.eval_end()
            raise RuntimeError("boom")
    found = plugin_data(tmp_path)
    assert found["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_FAILURE
    assert found["_hparams_/session_start_info"].session_start_info.hparams["lr"].number_value == 0.1
    accuracy = (outputs.argmax(dim=1) == y).float().mean().item()
    assert read_events(tmp_path).scalars["hparams/eval_accuracy"][0].value == pytest.approx(accuracy)
    assert metrics["accuracy"] == pytest.approx(accuracy)


def test_model_summary_can_be_switched_off(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    with tbhooks.attach(model, logdir=tmp_path, disable=OTHERS, autoload=False, plugins=[HParams(model_summary=False)]):
        pass
    texts = read_events(tmp_path).texts
    assert set(texts) == {"hparams/summary/text_summary"}
    assert texts["hparams/summary/text_summary"] == [
        "No hyper-parameters were given (pass `hparams={...}` to `Trainer` or `tbhooks.attach`)."
    ]


def test_value_conversion_and_table_escaping() -> None:
    assert hparam_value(True) is True
    assert hparam_value(3) == 3.0 and isinstance(hparam_value(3), float)
    assert hparam_value(torch.tensor(0.5)) == 0.5
    assert hparam_value("adam") == "adam"
    assert hparam_value((1, 2)) == "(1, 2)"
    assert hparam_value(None) == "None"
    assert hparams_table({"a|b": "x|y"}).splitlines()[-1] == "| a\\|b | x\\|y |"
    assert hparams_table({"lr": torch.tensor(0.5)}).splitlines()[-1] == "| lr | 0.5 |"


def test_options_are_validated() -> None:
    with pytest.raises(TypeError, match=r"HParams\(model_summary=...\) expects True or False, got int"):
        HParams(model_summary=1)  # type: ignore[arg-type]
