"""Reading a demo run back: what each TensorBoard dashboard will show, and the report printed at the end.

Everything is read from the files TensorBoard will read, so the report also catches a plugin that logged nothing.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tbhooks.demo.cli import DemoResult

DASHBOARDS = ("SCALARS", "IMAGES", "GRAPHS", "DISTRIBUTIONS/HISTOGRAMS", "PROJECTOR", "TEXT", "PR CURVES", "HPARAMS")
PLUGIN_DASHBOARDS = {"scalars": "SCALARS", "text": "TEXT", "pr_curves": "PR CURVES", "hparams": "HPARAMS"}
"""The dashboard of a tensor summary, by the plugin name in its metadata."""


@dataclass
class Dashboard:
    """What one dashboard will show for the run: its tags (or items) and a note."""

    tags: list[str] = field(default_factory=list)
    note: str = ""


def dashboard_summary(run_dir: str | Path) -> dict[str, Dashboard]:
    """Read ``run_dir``'s event files (sub-directories too) and ``projector_config.pbtxt``; tags by dashboard."""
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    from tbhooks.testing import read_events

    root = Path(run_dir)
    found = {name: Dashboard() for name in DASHBOARDS}
    hparams_count = 0
    event_dirs = sorted({path.parent for path in root.rglob("events.out.tfevents.*")})
    for directory in event_dirs:
        acc = read_events(directory).accumulator
        tags = acc.Tags()
        prefix = "" if directory == root else f"{directory.relative_to(root).as_posix()}: "
        found["SCALARS"].tags += [prefix + tag for tag in tags.get("scalars", [])]
        found["IMAGES"].tags += [prefix + tag for tag in tags.get("images", [])]
        found["DISTRIBUTIONS/HISTOGRAMS"].tags += [prefix + tag for tag in tags.get("histograms", [])]
        if tags.get("graph"):
            found["GRAPHS"].tags.append(prefix + "model graph")
        for tag in tags.get("tensors", []):
            content = acc.SummaryMetadata(tag).plugin_data
            dashboard = PLUGIN_DASHBOARDS.get(content.plugin_name)
            if dashboard is None:
                continue
            if content.plugin_name == "hparams":
                if tag == hparams_metadata.SESSION_START_INFO_TAG:
                    info = hparams_metadata.parse_session_start_info_plugin_data(content.content)
                    hparams_count += len(info.hparams)
                continue
            found[dashboard].tags.append(prefix + tag)
    if hparams_count:
        found["HPARAMS"].tags.append("session")
        found["HPARAMS"].note = f"{hparams_count} hyperparameters"
    found["PROJECTOR"] = projector_summary(root)
    return found


def projector_summary(root: Path) -> Dashboard:
    """The PROJECTOR dashboard: the embeddings ``root/projector_config.pbtxt`` lists, and how many have a sprite."""
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    path = root / "projector_config.pbtxt"
    if not path.is_file():
        return Dashboard(note="no projector_config.pbtxt")
    config = text_format.Parse(path.read_text(), ProjectorConfig())
    tags = [embedding.tensor_name or embedding.tensor_path for embedding in config.embeddings]
    sprites = sum(1 for embedding in config.embeddings if embedding.sprite.image_path)
    return Dashboard(tags=tags, note=f"projector_config.pbtxt, {sprites} with a sprite")


def tensorboard_command(logdir: str | Path) -> str:
    """The command that opens ``logdir`` in TensorBoard (the venv's ``tensorboard`` when it is not on PATH)."""
    executable = "tensorboard"
    if shutil.which(executable) is None:
        beside = Path(sys.executable).parent / "tensorboard"
        if beside.exists():
            executable = str(beside)
    return f"{shlex.quote(executable)} --logdir {shlex.quote(str(logdir))}"


def format_report(result: DemoResult, logdir: str | Path) -> str:
    """The summary ``tbhooks demo`` prints at the end: accuracy, the run directory, each dashboard's tags."""
    accuracy = result.metrics.get("accuracy")
    lines = [
        f"final test accuracy: {accuracy:.4f}" if accuracy is not None else "final test accuracy: n/a",
        f"  ({result.data.name}, {len(result.data.train)} training / {len(result.data.test)} test samples, "
        f"{result.device.type}, {result.seconds:.1f} s)",
        f"log directory: {result.run_dir}",
        "written per dashboard (read back from the run):",
    ]
    for name, dashboard in result.dashboards.items():
        count = len(dashboard.tags)
        shown = ", ".join(dashboard.tags[:4]) + (f", ... (+{count - 4} more)" if count > 4 else "")
        note = f" [{dashboard.note}]" if dashboard.note else ""
        lines.append(f"  {name:<26}{count:>3} {'tag' if count == 1 else 'tags'}{note}{': ' + shown if count else ''}")
    lines += [f"note: {note}" for note in result.notes]
    lines.append(f"open it: {tensorboard_command(logdir)}")
    return "\n".join(lines)
