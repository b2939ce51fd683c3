"""The README cannot drift: its code examples run as written, and its hook reference matches the live specs."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import tbhooks
from tbhooks import hookspecs
from tbhooks.testing import read_events

README = Path(__file__).parents[1] / "README.md"


FRAGMENT = "# fragment:"
"""A block that starts with this line is part of a loop shown above it: run inside a harness loop."""


def python_blocks(text: str, fragments: bool = False) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return [block for block in blocks if block.startswith(FRAGMENT) == fragments]


def missing_from_reference(text: str) -> list[str]:
    """Every spec whose exact signature is not a heading of the README."""
    headings = set(re.findall(r"^### `(on_\w+\([^)]*\))`$", text, flags=re.M))
    wanted = [
        f"{name}({', '.join(inspect.signature(fn).parameters)})"
        for name, fn in vars(hookspecs).items()
        if name.startswith("on_") and callable(fn)
    ]
    return [signature for signature in wanted if signature not in headings]


def test_readme_opens_with_the_two_commands():
    first_block = README.read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [["make", "demo"], ["make", "test"]]


def test_every_hook_spec_is_in_the_reference():
    assert missing_from_reference(README.read_text()) == []


def test_the_reference_check_fails_when_a_hook_is_missing():
    text = README.read_text().replace("### `on_eval_start(run, step, epoch)`\n", "")
    assert missing_from_reference(text) == ["on_eval_start(run, step, epoch)"]
    changed = README.read_text().replace("### `on_fit_end(run, step, epoch, metrics)`", "### `on_fit_end(run, step)`")
    assert missing_from_reference(changed) == ["on_fit_end(run, step, epoch, metrics)"]


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text()))))
def test_readme_examples_run_as_written(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TBHOOKS_DISABLE_PLUGINS", "embeddings,graph")  # speed only; the examples use defaults
    namespace: dict[str, object] = {"__name__": f"readme_example_{index}"}
    exec(compile(python_blocks(README.read_text())[index], f"README.md[python block {index}]", "exec"), namespace)
    if "BestAccuracy" in namespace:  # the plugin example: run it and read back what it wrote
        model = nn.Sequential(nn.Linear(4, 3))
        data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
        trainer = tbhooks.Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            nn.functional.cross_entropy,
            logdir=tmp_path / "plugin",
            plugins=[namespace["BestAccuracy"]()],
        )
        trainer.fit(data, epochs=3, eval_loader=data)
        best = read_events(tmp_path / "plugin").values("eval/best_accuracy")
        assert best == sorted(best) and len(best) == 3
    else:
        assert "'accuracy'" in capsys.readouterr().out
        assert any(tmp_path.joinpath("runs").rglob("events.out.tfevents.*"))


def test_the_grad_scaler_fragment_gives_plugins_unscaled_gradients(tmp_path):
    from tbhooks.default_plugins.histograms import Histograms

    fragment = fragment_named("GradScaler")
    assert "scaler.unscale_(optimizer)" in fragment
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    unscaled: list[torch.Tensor] = []
    model.weight.register_hook(lambda grad: unscaled.append(grad / scaler.get_scale()))
    plugin = Histograms(every_n_steps=2, weights=False)
    with tbhooks.attach(model, logdir=tmp_path, optimizer=optimizer, plugins=[plugin], autoload=False) as hooks:
        hooks.epoch_start()
        for _ in range(4):
            x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
            hooks.batch_start()
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
                loss = nn.functional.cross_entropy(out, y)
            exec(
                fragment,
                {"scaler": scaler, "loss": loss, "optimizer": optimizer, "hooks": hooks, "x": x, "y": y, "out": out},
            )
    logged = {event.step: event.histogram_value for event in read_events(tmp_path).histograms["grads/weight"]}
    assert sorted(logged) == [2, 4]
    for step, value in logged.items():
        assert value.max == pytest.approx(unscaled[step - 1].max().item(), rel=1e-6)
        assert value.sum == pytest.approx(unscaled[step - 1].double().sum().item(), rel=1e-5, abs=1e-9)


def fragment_named(name: str) -> str:
    [found] = [
        block for block in python_blocks(README.read_text(), fragments=True) if block.startswith(f"{FRAGMENT} {name}")
    ]
    return found


def classification(n: int = 64) -> torch.utils.data.DataLoader:
    torch.manual_seed(0)
    inputs = torch.randn(n, 8)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, inputs[:, :3].argmax(1)), batch_size=8)


# Lightning 2.6 uses a torch API torch now deprecates; and it advises on loader workers and a GPU unused.
@pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)`:FutureWarning")
@pytest.mark.filterwarnings(r"ignore:The '\w+' does not have many workers:UserWarning")
@pytest.mark.filterwarnings("ignore:GPU available but not used:UserWarning")
def test_the_lightning_fragment_runs(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(8, 3)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        validation_step = training_step

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TBHOOKS_DISABLE_PLUGINS", "embeddings,graph")
    namespace = {"pl": pl, "module": Module(), "train_loader": classification(), "val_loader": classification(16)}
    exec(fragment_named("Lightning"), namespace)
    assert read_events(tmp_path / "runs" / "lightning").steps("eval/accuracy") == [8, 16]


def test_the_ignite_fragment_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TBHOOKS_DISABLE_PLUGINS", "embeddings,graph")
    model = nn.Linear(8, 3)
    namespace = {
        "model": model,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "loss_fn": nn.functional.cross_entropy,
        "loader": classification(),
    }
    exec(fragment_named("Ignite"), namespace)
    events = read_events(tmp_path / "runs" / "ignite")
    assert events.steps("eval/accuracy") == [8, 16] and events.steps("train/epoch_loss") == [8, 16]


def test_the_hugging_face_fragment_runs(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    from tbhooks.demo.text import TokenDataset, text_data, tiny_bert

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TBHOOKS_DISABLE_PLUGINS", "embeddings,graph")
    data = text_data().limited(64)
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"), num_train_epochs=1, per_device_train_batch_size=16, eval_strategy="epoch",
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    namespace = {
        "model": tiny_bert(len(data.class_names)),
        "training_args": args,
        "train": TokenDataset(data.train),
        "test": TokenDataset(data.test),
    }
    exec(fragment_named("Hugging Face"), namespace)
    assert read_events(tmp_path / "runs" / "hf").steps("eval/accuracy") == [4]


def test_every_test_the_bad_input_table_names_exists():
    text = README.read_text()
    table = text.split("### Bad input", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| input")]
    assert len(rows) >= 10
    sources = "\n".join(p.read_text() for p in README.parent.joinpath("tests").glob("test_*.py"))
    for row in rows:
        names = re.findall(r"`(?:tests/\w+\.py::)?(test_\w+?)(\*)?`", row.rsplit("|", 2)[1])
        assert names, row
        for name, wildcard in names:
            pattern = rf"def {name}\w*\(" if wildcard else rf"def {name}\("
            assert re.search(pattern, sources), f"the README's table names {name}, which no test defines"


def test_the_quoted_benchmark_tables_are_the_ones_make_bench_wrote():
    quoted = README.read_text().split("<!-- make bench writes from here -->", 1)[1].split("<!-- make bench", 1)[0]
    rows = [line for line in quoted.splitlines() if line.startswith("|")]
    results = (README.parent / "benchmarks" / "RESULTS.md").read_text().splitlines()
    assert len(rows) > 10
    assert all(row in results for row in rows), "README quotes figures RESULTS.md does not hold"
