"""The run's event file, written without TensorBoard's per-record costs.

Without TensorFlow installed, ``SummaryWriter`` writes every record through
TensorBoard's stand-in ``GFile``, which opens the event file, appends the
record and closes the file again (about 40 us a record), and it checksums
each record in pure Python (two masked CRC-32C, about 0.2 ms per KB).  Both
run on the writer's thread, but hold the GIL for much of that time, so the
training thread waits: a run's histograms and images are hundreds of KB.

:func:`direct_records` swaps the record writer of one ``SummaryWriter`` for a
:class:`DirectRecordWriter`: the same TFRecord framing (length, masked
CRC-32C of the length, data, masked CRC-32C of the data), checksummed by
google-crc32c's C code, written to one unbuffered file descriptor opened in
append mode.  Every record still reaches the operating system as soon as it
is written (as the ``GFile`` did it, so a killed process loses nothing more),
the bytes are identical, and TensorBoard's reader verifies every checksum
with its own code.  Only the run's writer changes; nothing process-wide.

:func:`summary_event`, :func:`scalars_summary`, :func:`histograms_summary` and
:func:`graph_def_event` build the bytes of an ``Event`` and of a ``Summary`` without protobuf objects: a plugin's
logging step runs between cold caches, where building and serializing the
messages took most of its time (about 90 us for one event of two scalars,
against about 10 us).  The bytes are those ``SerializeToString`` gives
(``tests/test_event_records.py`` compares them), and :func:`write_event`
queues them as ``add_event`` queues its serialized event.
"""

from __future__ import annotations

import math
import os
import struct
import time
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as _python_masked_crc32c
from tensorboard.summary.writer.record_writer import RecordWriter

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from torch.utils.tensorboard import SummaryWriter

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_INFINITIES = (_FLOAT.pack(math.inf), _FLOAT.pack(-math.inf))


def varint(value: int) -> bytes:
    """Protobuf's varint of a (u)int64; a negative int64 is its two's complement, ten bytes."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_ONE_BYTE = [bytes((value,)) for value in range(0x80)]


def field_bytes(field: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (a string, bytes or an embedded message): tag, length, ``data``."""
    size = len(data)
    tag = _ONE_BYTE[field << 3 | 2] if field < 16 else varint(field << 3 | 2)
    return tag + (_ONE_BYTE[size] if size < 0x80 else varint(size)) + data


def _float32(value: float) -> bytes:
    """``value`` as protobuf stores a ``float`` field: rounded to float32, beyond its range infinite."""
    try:
        return _FLOAT.pack(value)
    except OverflowError:
        return _INFINITIES[value < 0]


def scalars_summary(values: Mapping[str, float]) -> bytes:
    """A serialized ``Summary`` with one ``simple_value`` per tag, in ``values``' order."""
    parts = []
    for tag, value in values.items():
        name = tag.encode()
        item = b"\x0a" + varint(len(name)) + name + b"\x15" + _float32(value)
        parts.append(b"\x0a" + varint(len(item)) + item)
    return b"".join(parts)


def _double(field: int, value: float) -> bytes:
    """A proto3 ``double`` field: left out when it is +0.0 (the default), as protobuf leaves it out."""
    if value == 0 and math.copysign(1.0, value) > 0:
        return b""
    return bytes((field << 3 | 1,)) + _DOUBLE.pack(value)


def histograms_summary(tags: Sequence[str], stats: np.ndarray, limits: np.ndarray, counts: np.ndarray) -> bytes:
    """A serialized ``Summary`` with one ``histo`` value per tag: what ``add_histogram_raw`` writes per tag.

    ``stats`` is ``[N, 5]`` (min, max, num, sum, sum of squares), ``limits`` and
    ``counts`` ``[N, bins]`` (float64): the buckets' right edges and counts,
    each row written as a packed field in one ``tobytes`` call.
    """
    parts = []
    limit_bytes = np.ascontiguousarray(limits, dtype="<f8")
    count_bytes = np.ascontiguousarray(counts, dtype="<f8")
    rows = stats.tolist()
    for index, tag in enumerate(tags):
        low, high, num, total, square = rows[index]
        edges, buckets = limit_bytes[index].tobytes(), count_bytes[index].tobytes()
        histo = b"".join(
            (
                _double(1, low),
                _double(2, high),
                _double(3, num),
                _double(4, total),
                _double(5, square),
                b"\x32" + varint(len(edges)) + edges if edges else b"",
                b"\x3a" + varint(len(buckets)) + buckets if buckets else b"",
            )
        )
        name = tag.encode()
        item = b"\x0a" + varint(len(name)) + name + b"\x2a" + varint(len(histo)) + histo
        parts.append(b"\x0a" + varint(len(item)) + item)
    return b"".join(parts)


def summary_event(summary: bytes, step: int, wall_time: float | None = None) -> bytes:
    """A serialized ``Event`` holding the serialized ``summary`` at ``step`` (wall time: now)."""
    stamp = time.time() if wall_time is None else wall_time
    head = b"\x09" + _DOUBLE.pack(stamp) if stamp else b""  # proto3 leaves zeros out
    if step:
        head += b"\x10" + varint(step)
    return head + b"\x2a" + varint(len(summary)) + summary


def graph_def_event(graph_def: bytes) -> bytes:
    """A serialized ``Event`` holding the serialized ``graph_def`` (field 4), at the time now and no step,
    as ``FileWriter.add_event(Event(graph_def=...))`` writes it."""
    return b"\x09" + _DOUBLE.pack(time.time()) + field_bytes(4, graph_def)


class EventBatch(tuple):  # type: ignore[type-arg]
    """Serialized events queued as one item: a :class:`DirectRecordWriter` writes each as its own record."""


def write_events(writer: SummaryWriter, events: Sequence[bytes]) -> None:
    """Queue the serialized ``events`` for ``writer``'s event file, in order, as ``add_event`` queues its
    serialized event: several at once as one hand-off to the writer's thread (one wake-up, one trip
    through the queue's lock) where the writer writes through a :class:`DirectRecordWriter`."""
    event_writer: Any = writer._get_file_writer().event_writer
    queue_writer = getattr(event_writer, "_async_writer", None)
    thread = getattr(queue_writer, "_worker", None)
    if queue_writer is None:  # another layout: through the public method
        from tensorboard.compat.proto.event_pb2 import Event

        for event in events:
            event_writer.add_event(Event.FromString(event))
    elif len(events) > 1 and isinstance(getattr(thread, "_record_writer", None), DirectRecordWriter):
        queue_writer.write(EventBatch(events))
    else:
        for event in events:
            queue_writer.write(event)


def write_event(writer: SummaryWriter, event: bytes) -> None:
    """Queue one serialized ``event`` (see :func:`write_events`)."""
    write_events(writer, (event,))


def c_masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``, by google-crc32c's C code."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def checksum() -> Callable[[bytes], int]:
    """:func:`c_masked_crc32c` where google-crc32c has its C extension and agrees with TensorBoard's
    own function on a sample; TensorBoard's pure-Python function otherwise."""
    try:
        import google_crc32c
    except ImportError:
        return _python_masked_crc32c
    if getattr(google_crc32c, "implementation", "") != "c":
        return _python_masked_crc32c
    sample = bytes(range(256)) * 3 + b"tbhooks"
    if c_masked_crc32c(sample) != _python_masked_crc32c(sample):
        return _python_masked_crc32c
    return c_masked_crc32c


class DirectRecordWriter(RecordWriter):
    """TensorBoard's record writer over one open, unbuffered file, with a checksum of our choosing."""

    def __init__(self, file: BinaryIO, crc: Callable[[bytes], int]) -> None:
        super().__init__(file)
        self._crc = crc

    def write(self, data: bytes) -> None:
        if type(data) is EventBatch:
            for event in data:
                self.write(event)
            return
        header = _LENGTH.pack(len(data))
        record = memoryview(header + _CRC.pack(self._crc(header)) + data + _CRC.pack(self._crc(data)))
        while record:  # an unbuffered write may take only part of it
            written = self._writer.write(record)
            record = record[written or 0 :]


def direct_records(writer: SummaryWriter) -> bool:
    """Have ``writer`` write its event file through a :class:`DirectRecordWriter`; True when it does.

    Called right after the ``SummaryWriter`` is created.  It relies on how
    ``torch.utils.tensorboard`` and TensorBoard build the writer (a queue
    writer whose thread holds a ``RecordWriter`` over a local ``GFile``); when
    anything differs (TensorFlow installed, a remote path, another version's
    layout) it changes nothing and the writer works as it came.
    """
    try:
        from tensorboard.compat.tensorflow_stub.io.gfile import GFile, LocalFileSystem

        queue_writer = writer.file_writer.event_writer._async_writer
        records = queue_writer._writer
        thread = queue_writer._worker
        target = records._writer
    except (ImportError, AttributeError):
        return False
    if (
        type(records) is not RecordWriter
        or getattr(thread, "_record_writer", None) is not records
        or type(target) is not GFile
        or not isinstance(target.fs, LocalFileSystem)
    ):
        return False
    direct = DirectRecordWriter(open(os.fsdecode(target.filename), "ab", buffering=0), checksum())
    # The thread may be writing the file's first record through the GFile right now: it
    # finishes it, and takes the new writer for the next one (appends, in order).
    queue_writer._writer = direct
    thread._record_writer = direct
    return True
