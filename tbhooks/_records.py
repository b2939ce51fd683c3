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
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, BinaryIO

from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as _python_masked_crc32c
from tensorboard.summary.writer.record_writer import RecordWriter

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch.utils.tensorboard import SummaryWriter

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


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
