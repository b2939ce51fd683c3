"""The run's event file: one open file and C checksums (``tbhooks._records``), verified by TensorBoard's own reader."""

from __future__ import annotations

import sys

import pytest
import torch
from _support import classification_data, loader, mlp
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.tensorflow_stub import errors
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New, masked_crc32c
from tensorboard.summary.writer import record_writer
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tbhooks
from tbhooks import _records
from tbhooks.run import MAX_QUEUE
from tbhooks.testing import read_events


def _records_of(logdir):
    """Every record of the directory's event file, each checked by TensorBoard's pure-Python CRC-32C code."""
    (path,) = logdir.glob("events.out.tfevents.*")
    reader = PyRecordReader_New(str(path))
    events = []
    while True:
        try:
            reader.GetNext()  # raises DataLossError on a checksum mismatch
        except errors.OutOfRangeError:
            return events
        events.append(Event.FromString(reader.record()))


def test_the_c_checksum_agrees_with_tensorboards_own():
    pytest.importorskip("google_crc32c")  # a dependency; the test below covers a Python without it
    for data in (b"", b"a", bytes(range(256)) * 40, torch.randn(1000).numpy().tobytes()):
        assert _records.c_masked_crc32c(data) == masked_crc32c(data)
    assert _records.checksum() is _records.c_masked_crc32c


def test_a_run_writes_through_one_file_with_records_tensorboards_reader_verifies(tmp_path):
    model = mlp()
    trainer = tbhooks.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), logdir=tmp_path, progress=False
    )
    seen = []  # the writer's queue writer, while the run is open (close lets go of it)
    trainer.on_attach.append(lambda hooks: seen.append(hooks.run.writer.file_writer.event_writer._async_writer))
    trainer.fit(loader(classification_data(n=64)), epochs=2)

    (queue_writer,) = seen
    assert isinstance(queue_writer._writer, _records.DirectRecordWriter)
    assert queue_writer._worker._record_writer is queue_writer._writer
    assert queue_writer._writer._crc is _records.checksum()  # the C one where google-crc32c is installed
    assert queue_writer._byte_queue.maxsize == MAX_QUEUE
    # Nothing process-wide changed: other writers keep TensorBoard's own function.
    assert record_writer.masked_crc32c is masked_crc32c

    records = _records_of(tmp_path)
    assert records[0].file_version.startswith("brain.Event")
    summaries = [value.tag for event in records for value in event.summary.value]
    assert "train/loss" in summaries
    assert any(event.graph_def for event in records)
    # ...and the dashboards' reader sees the same points.
    assert len(read_events(tmp_path).scalars["train/loss"]) == summaries.count("train/loss")


def test_without_google_crc32c_tensorboards_function_is_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "google_crc32c", None)  # None makes the import raise ImportError
    assert _records.checksum() is masked_crc32c


def test_without_the_c_extension_tensorboards_function_is_used(monkeypatch, tmp_path):
    google_crc32c = pytest.importorskip("google_crc32c")
    monkeypatch.setattr(google_crc32c, "implementation", "python")
    assert _records.checksum() is masked_crc32c
    writer = SummaryWriter(str(tmp_path))
    assert _records.direct_records(writer)
    writer.add_scalar("x", 1.0, 1)
    writer.close()
    assert [v.tag for e in _records_of(tmp_path) for v in e.summary.value] == ["x"]


def test_a_checksum_that_disagrees_is_not_used(monkeypatch):
    monkeypatch.setattr(_records, "c_masked_crc32c", lambda data: 0)
    assert _records.checksum() is masked_crc32c


def test_a_writer_of_another_shape_is_left_as_it_came(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    assert _records.direct_records(writer)
    # A second call finds a record writer that is not TensorBoard's own: nothing changes.
    direct = writer.file_writer.event_writer._async_writer._writer
    assert not _records.direct_records(writer)
    assert writer.file_writer.event_writer._async_writer._writer is direct
    for step in range(3):
        writer.add_scalar("x", float(step), step)
    writer.close()
    points = read_events(tmp_path).scalars["x"]
    assert [(p.step, p.value) for p in points] == [(0, 0.0), (1, 1.0), (2, 2.0)]


# -- events built as bytes -------------------------------------------------------------------


@pytest.mark.parametrize("step", [0, 1, 127, 128, 300, 2**40, -1])
def test_scalar_event_bytes_are_what_protobuf_serializes(step):
    from tensorboard.compat.proto.summary_pb2 import Summary

    inf, nan = float("inf"), float("nan")
    for values in (
        {"a": 0.0},
        {"train/loss": 1.5, "train/lr": 1e-3},
        # Beyond float32's range protobuf stores infinity; -0.0 and NaN keep their bits.
        {"x": nan, "y": inf, "z": -inf, "é/ü": 1e39, "n": -1e39, "m": 3.4028235e38, "t": 1e-45, "-0": -0.0},
    ):
        summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in values.items()])
        expected = Event(wall_time=1234.5, step=step, summary=summary).SerializeToString()
        assert _records.summary_event(_records.scalars_summary(values), step, 1234.5) == expected


@pytest.mark.parametrize("bins", [1, 3, 64])
def test_histogram_summary_bytes_are_what_protobuf_serializes(bins):
    import numpy as np
    from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

    generator = np.random.default_rng(bins)
    # Zeros are left out of proto3 output, -0.0 is not: both cases, in every statistic.
    for stats in ([0.0, 1.5, 10.0, 3.0, 0.0], [-0.0, 0.0, 1.0, -2.5, 1e300], [-3.0, -1.0, 7.0, -0.0, 2.0]):
        table = np.array([stats, stats])
        limits = np.sort(generator.normal(size=(2, bins)))
        counts = generator.integers(0, 5, size=(2, bins)).astype(float)
        tags = ["weights/fc.bias", "activations/ü"]
        values = [
            Summary.Value(
                tag=tag,
                histo=HistogramProto(
                    min=table[i, 0],
                    max=table[i, 1],
                    num=table[i, 2],
                    sum=table[i, 3],
                    sum_squares=table[i, 4],
                    bucket_limit=limits[i].tolist(),
                    bucket=counts[i].tolist(),
                ),
            )
            for i, tag in enumerate(tags)
        ]
        expected = Summary(value=values).SerializeToString()
        assert _records.histograms_summary(tags, table, limits, counts) == expected


def test_graph_def_bytes_are_what_protobuf_serializes():
    from tensorboard.compat.proto.attr_value_pb2 import AttrValue
    from tensorboard.compat.proto.graph_pb2 import GraphDef
    from tensorboard.compat.proto.node_def_pb2 import NodeDef
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.compat.proto.versions_pb2 import VersionDef

    from tbhooks.default_plugins._graphdef import graph_bytes, node_bytes

    # (name, op, inputs, attribute text, output shapes): no attributes at all, shapes only, text only
    # (an empty one too), a zero size (proto3 leaves it out), a scalar's empty shape, large sizes, unicode.
    nodes = [
        ("input/x", "IO Node", [], None, []),
        ("Net/Linear[fc]/weight", "Parameter", [], None, [(10, 4)]),
        ("Net/Linear[fc]/input.3", "aten::linear", ["input/x", "Net/Linear[fc]/weight"], "{}", [(0, 10), ()]),
        ("Net/é/ü", "prim::Constant", [], "{value : tensor(float32, [3])}", [(2**40, 1, 300)]),
        ("output/output.1", "IO Node", ["Net/Linear[fc]/input.3:1"], None, [(128,)]),
    ]

    def shape(sizes):
        return TensorShapeProto(dim=[TensorShapeProto.Dim(size=size) for size in sizes])

    def attributes(text, shapes):
        attr = {"attr": AttrValue(s=text.encode())} if text is not None else {}
        if shapes:
            attr["_output_shapes"] = AttrValue(list=AttrValue.ListValue(shape=[shape(s) for s in shapes]))
        return attr

    expected = GraphDef(
        node=[NodeDef(name=n, op=o, input=i, attr=attributes(t, s)) for n, o, i, t, s in nodes],
        versions=VersionDef(producer=22),
    )
    ours = graph_bytes([node_bytes(*node) for node in nodes])
    # The attr map's keys in sorted order, as deterministic serialization writes them.
    assert ours == expected.SerializeToString(deterministic=True)
    event = Event.FromString(_records.graph_def_event(ours))
    assert event.graph_def == ours and event.step == 0 and event.wall_time > 0


def test_events_written_as_bytes_read_back_in_order(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    try:
        _records.write_event(writer, _records.summary_event(_records.scalars_summary({"a": 1.0, "b": 2.0}), 7))
        writer.add_scalar("a", 3.0, 8)
        _records.write_event(writer, _records.summary_event(_records.scalars_summary({"a": 4.0}), 9))
    finally:
        writer.close()
    scalars = read_events(tmp_path).scalars
    assert [(p.step, p.value) for p in scalars["a"]] == [(7, 1.0), (8, 3.0), (9, 4.0)]
    assert [(p.step, p.value) for p in scalars["b"]] == [(7, 2.0)]


def test_events_queued_together_are_written_as_records_in_order(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    assert _records.direct_records(writer)
    try:
        events = [_records.summary_event(_records.scalars_summary({"x": float(i)}), i) for i in range(1, 4)]
        _records.write_events(writer, events)
        writer.add_scalar("x", 9.0, 9)
    finally:
        writer.close()
    assert [(p.step, p.value) for p in read_events(tmp_path).scalars["x"]] == [(1, 1.0), (2, 2.0), (3, 3.0), (9, 9.0)]
    assert len(_records_of(tmp_path)) == 1 + 4  # the file version, then one record per event
