"""HParams: the run's hyper-parameters and final metrics, in the run's own event files.

``SummaryWriter.add_hparams`` writes into a new sub-directory, an extra run in TensorBoard; this plugin writes
the hparams plugin's summaries through ``run.writer``'s own file writer, so the run *is* the hparams session.
"""

from __future__ import annotations

import numbers
import time
from typing import TYPE_CHECKING, Any

import torch

from tbhooks.default_plugins.common import check_bool
from tbhooks.default_plugins.graph import model_summary
from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    from tbhooks.run import Run

SUMMARY_TAG = "hparams/summary"
MODEL_TAG = "hparams/model"


def hparam_value(value: Any) -> bool | float | str:
    """``value`` as the hparams plugin stores it: a bool, a number (float) or a string."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return value
    return str(value)


def metric_tag(name: str) -> str:
    """The scalar tag of final evaluation metric ``name``: ``hparams/eval_<name>``."""
    from tbhooks.run import safe_tag

    return safe_tag("hparams", f"eval_{name}")


def _markdown_cell(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def hparams_table(hparams: Mapping[str, Any]) -> str:
    """A Markdown table of ``hparams`` (name, value), in the mapping's order."""
    if not hparams:
        return "No hyper-parameters were given (pass `hparams={...}` to `Trainer` or `tbhooks.attach`)."
    rows = [f"| {_markdown_cell(name)} | {_markdown_cell(value)} |" for name, value in hparams.items()]
    return "\n".join(["| hyper-parameter | value |", "|---|---|", *rows])


def _summary(tag: str, data: HParamsPluginData) -> Summary:
    """A summary holding only hparams plugin metadata, as TensorBoard's own hparams summaries are built."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata

    return Summary(
        value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)]
    )


class HParams:
    """Log the run's hyper-parameters, a model summary and the final metrics for the HPARAMS dashboard (rank 0).

    At ``on_fit_start``: ``run.hparams`` (``_hparams_/session_start_info``; bool, number or string, anything else
    as ``str``), a Markdown table under ``hparams/summary`` and ``str(model)`` under ``hparams/model`` (TEXT).
    At ``on_fit_end``: the final evaluation metrics as scalars ``hparams/eval_<metric>``, then
    ``_hparams_/experiment`` and ``_hparams_/session_end_info`` (success).  On ``on_exception``: the same, with
    status failure and the last completed evaluation's metrics, if any.

    :param model_summary: log ``hparams/model`` (default True).
    """

    name = "hparams"

    def __init__(self, model_summary: bool = True) -> None:
        self.model_summary = check_bool("HParams", "model_summary", model_summary)
        self._hparams: dict[str, bool | float | str] = {}
        self._last_metrics: dict[str, float] = {}

    @hookimpl
    def on_fit_start(self, run: Run) -> None:
        self._last_metrics = {}
        if not run.is_writer:
            return
        from tensorboard.plugins.hparams import metadata
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionStartInfo

        self._hparams = {str(name): hparam_value(value) for name, value in run.hparams.items()}
        start = SessionStartInfo(start_time_secs=time.time())
        for name, value in self._hparams.items():
            if isinstance(value, bool):
                start.hparams[name].bool_value = value
            elif isinstance(value, float):
                start.hparams[name].number_value = value
            else:
                start.hparams[name].string_value = value
        self._add_summary(run, _summary(metadata.SESSION_START_INFO_TAG, HParamsPluginData(session_start_info=start)))
        run.writer.add_text(SUMMARY_TAG, hparams_table(run.hparams), run.step)
        if self.model_summary:
            run.writer.add_text(MODEL_TAG, model_summary(run.model), run.step)

    @hookimpl
    def on_eval(self, metrics: Mapping[str, float]) -> None:
        self._last_metrics = dict(metrics)

    @hookimpl
    def on_fit_end(self, run: Run, step: int, metrics: Mapping[str, float]) -> None:
        self._finish(run, step, dict(metrics), success=True)

    @hookimpl
    def on_exception(self, run: Run, step: int) -> None:
        self._finish(run, step, self._last_metrics, success=False)

    def _finish(self, run: Run, step: int, metrics: dict[str, float], *, success: bool) -> None:
        if not run.is_writer:
            return
        from tensorboard.plugins.hparams import api_pb2, metadata
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

        tags = []
        for name, value in metrics.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                tag = metric_tag(name)
                run.writer.add_scalar(tag, float(value), step)
                tags.append(tag)
        kinds = {bool: "DATA_TYPE_BOOL", float: "DATA_TYPE_FLOAT64", str: "DATA_TYPE_STRING"}
        experiment = api_pb2.Experiment(
            time_created_secs=time.time(),
            hparam_infos=[
                api_pb2.HParamInfo(name=name, type=api_pb2.DataType.Value(kinds[type(value)]))
                for name, value in self._hparams.items()
            ],
            metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in tags],
        )
        status = api_pb2.Status.Value("STATUS_SUCCESS" if success else "STATUS_FAILURE")
        end = SessionEndInfo(status=status, end_time_secs=time.time())
        self._add_summary(run, _summary(metadata.EXPERIMENT_TAG, HParamsPluginData(experiment=experiment)), step)
        self._add_summary(run, _summary(metadata.SESSION_END_INFO_TAG, HParamsPluginData(session_end_info=end)), step)

    @staticmethod
    def _add_summary(run: Run, summary: Summary, step: int | None = None) -> None:
        # The writer's public file writer keeps them in the run's own event file (unlike add_hparams).
        run.writer.file_writer.add_summary(summary, run.step if step is None else step)
