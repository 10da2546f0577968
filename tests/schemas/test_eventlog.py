"""The event log on real files: round trip, rotation, restarts, torn tails, corruption, resume, write faults."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simic.schemas import LogFormatError, LogReader, LogWriteError, LogWriter
from simic.schemas.eventlog import COMPRESSED_CHUNK, FRAME_OVERHEAD, HEADER_COPY_INTERVAL, LOG_MAGIC, compress_segment, segment_paths

FRAME_HEAD = FRAME_OVERHEAD
"""Bytes of a frame before its payload: marker, type, length, counter, recv_ns, crc (24)."""


def payloads(n: int, size: int = 40) -> list[bytes]:
    return [bytes([i % 251]) * size + f"#{i}".encode() for i in range(n)]


def write_log(directory: Path, messages: list[bytes], **kwargs) -> LogWriter:
    with LogWriter(directory, **kwargs) as writer:
        for i, payload in enumerate(messages):
            writer.write(payload, recv_ns=1_700_000_000_000_000_000 + i)
    return writer


def read(target, **kwargs) -> tuple[list, LogReader]:
    reader = LogReader(target, **kwargs)
    return list(reader), reader


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


class TestRoundTrip:
    def test_frames_come_back_as_written(self, tmp_path):
        """Every message written is read back byte for byte, with its receive time, in order, with no problems."""
        messages = payloads(20) + [b"", b"\xd3SF inside a payload", LOG_MAGIC]
        write_log(tmp_path, messages)
        frames, reader = read(tmp_path)
        assert [f.payload for f in frames] == messages
        assert [f.recv_ns for f in frames] == [1_700_000_000_000_000_000 + i for i in range(len(messages))]
        assert reader.problems == []

    def test_a_segment_file_reads_on_its_own(self, tmp_path):
        """A single segment file is a log by itself, and its header names the writer."""
        writer = write_log(tmp_path, payloads(3), writer="test-writer")
        frames, reader = read(writer.path)
        assert len(frames) == 3 and all(f.path == writer.path for f in frames)
        assert reader.headers[writer.path]["writer"] == "test-writer"

    def test_frame_offsets_point_at_their_frames(self, tmp_path):
        """Each frame's offset is where it starts: the next frame follows its payload."""
        write_log(tmp_path, payloads(4))
        frames, _ = read(tmp_path)
        for a, b in zip(frames, frames[1:]):
            assert b.offset == a.offset + FRAME_HEAD + len(a.payload)

    def test_counters_match_what_was_written(self, tmp_path):
        """frames_written and bytes_written count what reached the file."""
        writer = write_log(tmp_path, payloads(5))
        assert writer.frames_written == 5
        assert writer.bytes_written == sum(FRAME_HEAD + len(p) for p in payloads(5))

    def test_empty_directory_reads_as_nothing(self, tmp_path):
        """A log directory without segments yields no frames and no problems."""
        frames, reader = read(tmp_path)
        assert frames == [] and reader.problems == []

    def test_missing_path_is_a_clear_error(self, tmp_path):
        """A log path that does not exist raises FileNotFoundError naming it."""
        with pytest.raises(FileNotFoundError, match="nowhere"):
            LogReader(tmp_path / "nowhere")


class TestRotation:
    def test_size_rotation_makes_several_segments_read_in_order(self, tmp_path):
        """Segments are cut at max_segment_bytes and the directory reads back as one ordered stream."""
        messages = payloads(200, size=100)
        writer = write_log(tmp_path, messages, max_segment_bytes=4096)
        paths = segment_paths(tmp_path)
        assert len(paths) > 3 and paths == writer.segments
        assert all(p.stat().st_size <= 4096 for p in paths)
        frames, reader = read(tmp_path)
        assert [f.payload for f in frames] == messages and reader.problems == []
        assert [f.path for f in frames] == sorted(f.path for f in frames)

    def test_a_frame_larger_than_a_segment_gets_a_segment_of_its_own(self, tmp_path):
        """A frame bigger than max_segment_bytes is written whole, alone, and no empty segment is left."""
        messages = [b"a" * 10, b"b" * 10_000, b"c" * 10_000, b"d" * 10]
        write_log(tmp_path, messages, max_segment_bytes=4096)
        paths = segment_paths(tmp_path)
        counts = [len(list(LogReader(p))) for p in paths]
        assert counts == [1, 1, 1, 1]
        assert [f.payload for f in LogReader(tmp_path)] == messages

    def test_buffered_frames_reach_the_file_at_flush(self, tmp_path):
        """Frames wait in the buffer until flush, then all of them are readable."""
        writer = LogWriter(tmp_path, buffer_bytes=1 << 20)
        for payload in payloads(5):
            writer.write(payload, recv_ns=1)
        assert list(LogReader(writer.path)) == []
        writer.flush()
        assert len(list(LogReader(writer.path))) == 5
        writer.close()
        writer.close()  # a second close is harmless


class TestRestart:
    def test_restarted_writer_starts_a_new_segment_and_leaves_old_ones_alone(self, tmp_path):
        """A writer opened on an existing log never appends to an old segment: it starts the next one."""
        first = write_log(tmp_path, payloads(3))
        old = {p: p.read_bytes() for p in segment_paths(tmp_path)}
        second = write_log(tmp_path, [b"after restart"])
        assert second.segments[0] not in old
        assert second.segments[0].name > max(p.name for p in old)
        assert {p: p.read_bytes() for p in old} == old
        assert [f.payload for f in LogReader(tmp_path)] == payloads(3) + [b"after restart"]
        assert first.segments[0].name == "segment-000001.simlog"

    def test_writer_after_a_crash_starts_past_a_torn_segment(self, tmp_path):
        """After a crash left a torn segment, the new writer's frames go to a new segment and both read back."""
        crashed = write_log(tmp_path, payloads(3))
        with open(crashed.path, "ab") as f:
            f.write(b"\xd3SF\x01")  # a frame header cut short by the crash
        torn = crashed.path.read_bytes()
        write_log(tmp_path, [b"new"])
        assert crashed.path.read_bytes() == torn
        frames, reader = read(tmp_path)
        assert [f.payload for f in frames] == payloads(3) + [b"new"]
        assert [p.kind for p in reader.problems] == ["torn_tail"]


class TestTornTail:
    @pytest.fixture
    def log(self, tmp_path):
        """A closed one-segment log of four frames, and its frames as read."""
        writer = write_log(tmp_path, payloads(4, size=100))
        return writer.path, list(LogReader(writer.path))

    @pytest.mark.parametrize(
        ("cut", "case"),
        [
            (1, "one byte of the marker"),
            (3, "the marker only"),
            (10, "mid frame header"),
            (FRAME_HEAD, "frame header only"),
            (FRAME_HEAD + 50, "mid payload"),
            (FRAME_HEAD + 101, "all but the last byte"),
        ],
    )
    def test_torn_last_frame_is_reported_never_served(self, log, cut, case):
        """A last frame cut short is a torn_tail at its offset, with the bytes left, and is not yielded."""
        path, whole = log
        last = whole[-1]
        assert len(last.payload) == 102
        os.truncate(path, last.offset + cut)
        frames, reader = read(path)
        assert frames == whole[:-1]
        (problem,) = reader.problems
        assert (problem.kind, problem.offset, problem.length) == ("torn_tail", last.offset, cut)
        assert reader.next_offset == last.offset
        assert str(last.offset) in str(problem)

    @pytest.mark.parametrize("size", [0, 4, 8, 13, 20])
    def test_torn_segment_header_is_reported(self, log, size):
        """A segment cut inside its own header (or empty) is a torn_tail at offset 0 with no frames."""
        path, _ = log
        os.truncate(path, size)
        frames, reader = read(path)
        assert frames == []
        (problem,) = reader.problems
        assert (problem.kind, problem.offset, problem.length) == ("torn_tail", 0, size)

    def test_segment_of_a_header_only_is_empty_not_torn(self, log):
        """A segment holding its header and no frame has nothing to report."""
        path, whole = log
        os.truncate(path, whole[0].offset)
        frames, reader = read(path)
        assert frames == [] and reader.problems == []

    def test_torn_tail_of_an_early_segment_does_not_stop_later_ones(self, tmp_path):
        """A torn first segment is reported and the next segment is still read."""
        write_log(tmp_path, payloads(2))
        write_log(tmp_path, [b"second"])
        first, _ = segment_paths(tmp_path)
        os.truncate(first, first.stat().st_size - 5)
        frames, reader = read(tmp_path)
        assert [f.payload for f in frames] == payloads(1) + [b"second"]
        assert [(p.kind, p.path) for p in reader.problems] == [("torn_tail", first)]


class TestCorruption:
    @pytest.fixture
    def log(self, tmp_path):
        writer = write_log(tmp_path, payloads(5, size=100))
        return writer.path, list(LogReader(writer.path))

    @pytest.mark.parametrize(
        ("where", "detail"),
        [
            (FRAME_HEAD + 30, "checksum mismatch"),  # payload
            (0, "bad frame marker"),  # marker
            (3, "checksum mismatch"),  # type
            (5, "truncated"),  # length: the frame claims to run past the end of the file
            (6, "implausible frame length"),  # length: more than any message may be
            (9, "checksum mismatch"),  # counter
            (14, "checksum mismatch"),  # recv_ns
            (21, "checksum mismatch"),  # crc
        ],
    )
    def test_bit_flip_in_a_middle_frame_is_skipped_and_reading_resumes(self, log, where, detail):
        """A damaged middle frame is one 'corrupt' problem spanning it; the frames after it are still yielded."""
        path, whole = log
        bad = whole[2]
        flip_bit(path, bad.offset + where, bit=6)
        frames, reader = read(path)
        assert frames == whole[:2] + whole[3:]
        (problem,) = reader.problems
        assert (problem.kind, problem.offset, problem.length) == ("corrupt", bad.offset, whole[3].offset - bad.offset)
        assert detail in problem.detail

    def test_garbage_between_frames_is_skipped(self, log):
        """Bytes that are no frame between two frames are one corrupt stretch of exactly their length."""
        path, whole = log
        data = path.read_bytes()
        cut = whole[2].offset
        path.write_bytes(data[:cut] + b"\x00garbage\xd3S" + data[cut:])
        frames, reader = read(path)
        assert [f.payload for f in frames] == [f.payload for f in whole]
        (problem,) = reader.problems
        assert (problem.kind, problem.offset, problem.length) == ("corrupt", cut, 10)

    def test_damaged_last_frame_is_a_torn_tail(self, log):
        """A damaged last frame has no good frame after it: it is reported as the tail and not yielded."""
        path, whole = log
        flip_bit(path, whole[-1].offset + FRAME_HEAD + 1)
        frames, reader = read(path)
        assert frames == whole[:-1]
        assert [(p.kind, p.offset) for p in reader.problems] == [("torn_tail", whole[-1].offset)]


class TestConcatenated:
    def test_concatenated_segments_read_as_one_stream(self, tmp_path):
        """Segment files joined with cat read back as all their frames in order, headers skipped, no problems."""
        write_log(tmp_path / "log", payloads(200, size=100), max_segment_bytes=4096)
        paths = segment_paths(tmp_path / "log")
        assert len(paths) > 2
        joined = tmp_path / "joined.simlog"
        joined.write_bytes(b"".join(p.read_bytes() for p in paths))
        frames, reader = read(joined)
        assert [f.payload for f in frames] == payloads(200, size=100)
        assert reader.problems == []

    def test_torn_segment_followed_by_another_loses_only_the_torn_frame(self, tmp_path):
        """A torn frame at the end of one joined segment costs that frame; the next segment's frames follow."""
        a = write_log(tmp_path / "a", [b"a1", b"a2"]).path
        b = write_log(tmp_path / "b", [b"b1", b"b2"]).path
        joined = tmp_path / "joined.simlog"
        joined.write_bytes(a.read_bytes()[:-1] + b.read_bytes())
        frames, reader = read(joined)
        assert [f.payload for f in frames] == [b"a1", b"b1", b"b2"]
        assert [p.kind for p in reader.problems] == ["corrupt"]


class TestFormat:
    def test_a_file_without_magic_or_header_copy_is_a_clear_format_error(self, tmp_path):
        """A file that does not start with the log magic and holds no copy of a header raises LogFormatError saying so
        and naming the file."""
        path = tmp_path / "segment-000001.simlog"
        path.write_bytes(b"SIMICLOX" + bytes(200))
        with pytest.raises(LogFormatError, match=r"segment-000001\.simlog is not a simic event log \(bad magic\)"):
            list(LogReader(path))

    def test_some_other_file_is_a_format_error(self, tmp_path):
        """A short file that is not a log at all raises LogFormatError."""
        path = tmp_path / "notes.txt"
        path.write_bytes(b"hello")
        with pytest.raises(LogFormatError, match="not a simic event log"):
            list(LogReader(path))

    def test_newer_format_is_refused_naming_both_versions(self, tmp_path):
        """A log of a format this code does not know (magic intact, no format-2 header copy in it) names its format and
        the ones this code reads."""
        path = tmp_path / "segment-000001.simlog"
        path.write_bytes(LOG_MAGIC + struct.pack("<H", 3) + bytes(100))
        with pytest.raises(LogFormatError, match="log format 3; this code reads formats 1, 2"):
            list(LogReader(path))

    def test_small_segment_limit_is_refused_at_construction(self, tmp_path):
        """A writer refuses a segment size too small to be useful."""
        with pytest.raises(ValueError, match="max_segment_bytes"):
            LogWriter(tmp_path, max_segment_bytes=100)


class TestResume:
    def test_start_offset_reads_only_frames_after_a_previous_reader(self, tmp_path):
        """A reader started at a previous reader's next_offset yields only the frames appended since."""
        writer = LogWriter(tmp_path)
        for payload in payloads(3):
            writer.write(payload, recv_ns=1)
        writer.flush()
        first, reader = read(writer.path)
        assert len(first) == 3 and reader.next_offset == writer.path.stat().st_size
        for payload in [b"four", b"five"]:
            writer.write(payload, recv_ns=2)
        writer.flush()
        later, resumed = read(writer.path, start_offset=reader.next_offset)
        assert [f.payload for f in later] == [b"four", b"five"] and resumed.problems == []
        writer.close()

    def test_a_frame_being_written_is_picked_up_once_whole(self, tmp_path):
        """Following a growing file: a half-written frame is a torn tail now and a frame on the next read."""
        writer = LogWriter(tmp_path)
        writer.write(b"one", recv_ns=1)
        writer.flush()
        before = writer.path.stat().st_size
        writer.write(b"two", recv_ns=2)
        writer.close()
        whole = writer.path.read_bytes()
        writer.path.write_bytes(whole[: before + 10])
        frames, reader = read(writer.path)
        assert [f.payload for f in frames] == [b"one"] and [p.kind for p in reader.problems] == ["torn_tail"]
        assert reader.next_offset == before
        writer.path.write_bytes(whole)
        later, resumed = read(writer.path, start_offset=reader.next_offset)
        assert [f.payload for f in later] == [b"two"] and resumed.problems == []

    def test_start_offset_needs_a_single_segment(self, tmp_path):
        """start_offset on a directory of several segments is refused."""
        write_log(tmp_path, payloads(100, size=100), max_segment_bytes=4096)
        with pytest.raises(ValueError, match="single segment"):
            LogReader(tmp_path, start_offset=100)


@pytest.fixture
def full_filesystem(tmp_path):
    """A 64 KiB tmpfs mounted for this test (needs root; skipped where mounting is not allowed)."""
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


class TestWriteFailure:
    def test_disk_full_raises_and_leaves_no_partial_frame(self, full_filesystem):
        """When the disk fills mid-flush, LogWriteError is raised, the file holds only whole frames, and writing goes on once space returns."""
        writer = LogWriter(full_filesystem / "log", buffer_bytes=1 << 30)
        writer.write(b"kept", recv_ns=1)
        writer.flush()
        for i in range(30):
            writer.write(bytes([i]) * 4000, recv_ns=2)  # 120 kB: more than the filesystem holds
        with pytest.raises(LogWriteError) as caught:
            writer.flush()
        assert caught.value.errno == errno.ENOSPC and "30 frames not written" in str(caught.value)
        frames, reader = read(writer.path)
        assert [f.payload for f in frames] == [b"kept"] and reader.problems == []
        assert writer.frames_written == 1
        writer.write(b"after", recv_ns=3)  # space is back: the failed bytes were truncated away
        writer.close()
        frames, reader = read(writer.path)
        assert [f.payload for f in frames] == [b"kept", b"after"] and reader.problems == []

    def test_file_size_limit_raises_and_leaves_no_partial_frame(self, tmp_path):
        """A write cut short by the file size limit raises LogWriteError, leaves only whole frames, and the next flush lands right after them."""
        # RLIMIT_FSIZE applies to every file of a process (pytest's own output too): use a child process.
        script = textwrap.dedent(
            f"""
            import errno, resource, sys
            from pathlib import Path
            from simic.schemas.eventlog import LogReader, LogWriteError, LogWriter

            writer = LogWriter(Path({str(tmp_path)!r}), buffer_bytes=1 << 30)
            writer.write(b"kept", recv_ns=1)
            writer.flush()
            size = writer.path.stat().st_size
            for i in range(10):
                writer.write(bytes([i]) * 1000, recv_ns=2)
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 2500, resource.RLIM_INFINITY))  # the flush writes 2500 bytes, then fails
            try:
                writer.flush()
            except LogWriteError as error:
                assert error.errno == errno.EFBIG, error
            else:
                sys.exit("no LogWriteError")
            assert writer.path.stat().st_size == size
            writer.write(b"after", recv_ns=3)
            writer.flush()
            reader = LogReader(writer.path)
            assert [f.payload for f in reader] == [b"kept", b"after"] and reader.problems == []
            writer.close()
            """
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr


log_payloads = st.lists(st.binary(max_size=60), min_size=1, max_size=8)


class TestProperties:
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(messages=log_payloads, data=st.data())
    def test_damaged_logs_never_raise_and_never_serve_invented_frames(self, messages, data):
        """Whatever bits flip or bytes are cut, the reader raises nothing but LogFormatError (for a damaged segment
        header) and every frame it yields is one that was written, in the order written."""
        with tempfile.TemporaryDirectory() as directory:
            path = write_log(Path(directory), messages).path
            original = path.read_bytes()
            header_end = list(LogReader(path))[0].offset
            damaged = bytearray(original)
            for _ in range(data.draw(st.integers(0, 3), label="flips")):
                bit = data.draw(st.integers(0, len(damaged) * 8 - 1), label="bit")
                damaged[bit // 8] ^= 1 << (bit % 8)
            damaged = damaged[: data.draw(st.integers(0, len(damaged)), label="cut")]
            path.write_bytes(bytes(damaged))
            reader = LogReader(path)
            try:
                frames = list(reader)
            except LogFormatError:
                assert damaged[:header_end] != original[:header_end], "a format error with an intact header"
                return
            written = iter(messages)
            for frame in frames:
                assert frame.payload in written, "a frame that was never written, or out of order"
            for problem in reader.problems:
                assert 0 <= problem.offset <= len(damaged) and problem.offset + problem.length <= len(damaged)
            if bytes(damaged) == original:
                assert [f.payload for f in frames] == messages and reader.problems == []


HEADER_FIELDS = {"magic": 0, "version": 8, "key": 10, "meta length": 14, "meta": 20, "crc": -1}
"""Where each field of a format-2 segment header starts (``crc``: the last byte of the header)."""


def header_end(path: Path) -> int:
    """End of a format-2 segment's header, where frame 0 (its copy) starts."""
    data = path.read_bytes()
    return 18 + struct.unpack_from("<I", data, 14)[0] + 4


class TestFormat2:
    def test_frames_are_numbered_from_the_header_copy_on(self, tmp_path):
        """Frame 0 of a segment is the copy of its header (never served); the frames written are numbered 1, 2, ...
        and a restarted writer numbers its new segment from 0 again."""
        write_log(tmp_path, payloads(3))
        write_log(tmp_path, payloads(2))
        frames, _ = read(tmp_path)
        assert [(f.path.name, f.counter) for f in frames] == [("segment-000001.simlog", n) for n in (1, 2, 3)] + [
            ("segment-000002.simlog", n) for n in (1, 2)]
        first = segment_paths(tmp_path)[0]
        assert frames[0].offset == header_end(first) + FRAME_HEAD + header_end(first)  # the copy: a frame holding the header

    @pytest.mark.parametrize("field", list(HEADER_FIELDS))
    def test_a_damaged_header_is_read_with_its_copy(self, tmp_path, field):
        """A flipped bit in any field of the segment header costs nothing but the header's own bytes: every frame is
        read, and the header is reported as one corrupt stretch saying the copy was used."""
        writer = write_log(tmp_path, payloads(5))
        whole = list(LogReader(writer.path))
        end = header_end(writer.path)
        flip_bit(writer.path, HEADER_FIELDS[field] % end, bit=2)
        frames, reader = read(tmp_path)
        assert frames == whole
        (problem,) = reader.problems
        assert (problem.kind, problem.offset, problem.length) == ("corrupt", 0, end)
        assert problem.detail.startswith("segment header damaged")
        assert f"copy at offset {end}" in problem.detail or (field == "version" and "the rest of it holds" in problem.detail)

    def test_a_damaged_header_and_first_copy_are_read_with_a_later_copy(self, tmp_path):
        """With the header and frame 0 both damaged (a zeroed first block), the key comes from the copy repeated after
        HEADER_COPY_INTERVAL bytes, and every frame after the damage is read, those before that copy included."""
        messages = payloads(3000, size=1000)  # about 3 MiB: copies at about 1 and 2 MiB
        writer = write_log(tmp_path, messages)
        whole = list(LogReader(writer.path))
        data = bytearray(writer.path.read_bytes())
        zeroed = whole[0].offset + 10  # the header, its copy and the first frame's head
        data[:zeroed] = bytes(zeroed)
        writer.path.write_bytes(bytes(data))
        frames, reader = read(writer.path)
        assert frames == whole[1:]
        (problem,) = reader.problems
        assert (problem.kind, problem.offset, problem.length) == ("corrupt", 0, whole[1].offset)
        assert "read with the key of its copy at offset" in problem.detail

    def test_header_copies_follow_every_interval(self, tmp_path):
        """The header is repeated once HEADER_COPY_INTERVAL bytes of frames have followed the last copy: the numbering
        of the served frames skips exactly those copies."""
        write_log(tmp_path, payloads(3000, size=1000))
        counters = [f.counter for f in LogReader(tmp_path)]
        skipped = [a for a, b in zip(counters, counters[1:]) if b != a + 1]
        frame = FRAME_HEAD + 1000 + 5  # about: payload of 1000 bytes and "#NNNN"
        assert len(skipped) == 3000 * frame // HEADER_COPY_INTERVAL
        assert all(b == a + 2 for a, b in zip(counters, counters[1:]) if b != a + 1)

    def test_damage_reports_how_many_frames_it_cost(self, tmp_path):
        """A stretch of zeros over three frames is one corrupt stretch that says 3 frames were lost."""
        writer = write_log(tmp_path, payloads(8, size=100))
        whole = list(LogReader(writer.path))
        data = bytearray(writer.path.read_bytes())
        data[whole[2].offset + 5 : whole[4].offset + 30] = bytes(whole[4].offset + 25 - whole[2].offset)
        writer.path.write_bytes(bytes(data))
        frames, reader = read(writer.path)
        assert frames == whole[:2] + whole[5:]
        (problem,) = reader.problems
        assert (problem.offset, problem.length) == (whole[2].offset, whole[5].offset - whole[2].offset)
        assert problem.detail.endswith("3 frames lost")

    def test_a_block_written_twice_is_not_served_twice(self, tmp_path):
        """Frames of the segment repeated later in it (a block of the file written twice) hold their key but not their
        place: they are one corrupt stretch, served once."""
        writer = write_log(tmp_path, payloads(6, size=100))
        whole = list(LogReader(writer.path))
        data = writer.path.read_bytes()
        repeated = data[whole[1].offset : whole[3].offset]
        writer.path.write_bytes(data[: whole[4].offset] + repeated + data[whole[4].offset :])
        frames, reader = read(writer.path)
        assert [f.payload for f in frames] == [f.payload for f in whole]
        (problem,) = reader.problems
        assert (problem.offset, problem.length) == (whole[4].offset, len(repeated))
        assert "frame 2 out of place (after frame 4)" in problem.detail

    def test_a_frame_of_another_segment_is_never_served(self, tmp_path):
        """A whole, valid frame of another segment spliced between two frames does not hold with this segment's key:
        it is a corrupt stretch, not data."""
        writer = write_log(tmp_path / "a", payloads(4, size=50))
        other = write_log(tmp_path / "b", [b"FOREIGN"])
        foreign_frame = other.path.read_bytes()[list(LogReader(other.path))[0].offset :]
        whole = list(LogReader(writer.path))
        data = writer.path.read_bytes()
        cut = whole[2].offset
        writer.path.write_bytes(data[:cut] + foreign_frame + data[cut:])
        frames, reader = read(writer.path)
        assert [f.payload for f in frames] == [f.payload for f in whole]
        assert [(p.kind, p.offset, p.length) for p in reader.problems] == [("corrupt", cut, len(foreign_frame))]

    def test_a_failed_flush_leaves_no_gap_in_the_numbering(self, tmp_path):
        """Frames lost to a failed write give their numbers to the next frames: the file reads with no problem."""
        script = textwrap.dedent(
            f"""
            import resource
            from pathlib import Path
            from simic.schemas.eventlog import LogReader, LogWriteError, LogWriter

            writer = LogWriter(Path({str(tmp_path)!r}), buffer_bytes=1 << 30)
            writer.write(b"kept", recv_ns=1)
            writer.flush()
            size = writer.path.stat().st_size
            for i in range(10):
                writer.write(bytes([i]) * 1000, recv_ns=2)
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 2500, resource.RLIM_INFINITY))
            try:
                writer.flush()
            except LogWriteError:
                pass
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            writer.write(b"after", recv_ns=3)
            writer.close()
            reader = LogReader(writer.path)
            print([(f.payload, f.counter) for f in reader], reader.problems)
            """
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[(b'kept', 1), (b'after', 2)] []"


FIXTURES = Path(__file__).parent / "fixtures"


class TestFormat1:
    """Logs written before format 2 (``fixtures/log_v1``, frozen by ``fixtures/make_log_v1.py``) are still read."""

    @pytest.fixture
    def log_v1(self, tmp_path) -> tuple[Path, dict]:
        target = tmp_path / "log_v1"
        shutil.copytree(FIXTURES / "log_v1", target)
        return target, json.loads((FIXTURES / "log_v1.expected.json").read_text())

    def test_the_format_1_fixture_reads_as_it_was_written(self, log_v1):
        """Every frame of the format-1 fixture comes back with its segment, offset, receive time, type and payload; no
        problem; the headers name their writer."""
        target, expected = log_v1
        frames, reader = read(target)
        got = [{"segment": f.path.name, "offset": f.offset, "recv_ns": f.recv_ns, "type": f.type, "payload": f.payload.hex()} for f in frames]
        assert got == expected["frames"] and reader.problems == []
        assert all(f.counter is None for f in frames)
        assert {meta["writer"] for meta in reader.headers.values()} == {expected["writer"]}

    def test_a_directory_of_format_1_and_format_2_segments_reads_in_order(self, log_v1):
        """A daemon restarted on a format-1 log writes format 2 in the next segment; the directory reads as one stream."""
        target, expected = log_v1
        writer = write_log(target, [b"format two"])
        assert writer.path.name == "segment-000003.simlog"
        frames, reader = read(target)
        assert [f.payload.hex() for f in frames] == [f["payload"] for f in expected["frames"]] + [b"format two".hex()]
        assert reader.problems == []

    def test_a_flipped_bit_in_a_format_1_frame_costs_that_frame(self, log_v1):
        """Damage to a format-1 frame is a corrupt stretch at its offset; the other frames are read."""
        target, expected = log_v1
        first = target / "segment-000001.simlog"
        victim = expected["frames"][1]
        flip_bit(first, victim["offset"] + 20 + 3)
        frames, reader = read(target)
        assert [f.offset for f in frames if f.path == first] == [f["offset"] for f in expected["frames"][:5] if f is not victim]
        assert [(p.kind, p.offset) for p in reader.problems] == [("corrupt", victim["offset"])]

    def test_a_damaged_format_1_header_stops_reading_as_documented(self, log_v1):
        """Format 1 keeps its limit: a header whose length or metadata is damaged is a LogFormatError naming the file
        (format 2 reads on with a copy of its header)."""
        target, _ = log_v1
        flip_bit(target / "segment-000001.simlog", 12, bit=7)  # the metadata length
        with pytest.raises(LogFormatError, match=r"segment-000001\.simlog has an implausible header length"):
            list(LogReader(target))

    def test_a_format_1_segment_without_its_magic_is_reported_and_the_others_read(self, log_v1):
        """In a directory, a format-1 segment whose magic is damaged holds nothing this reader can recognise: it is one
        corrupt stretch naming the file, and the other segments are read."""
        target, expected = log_v1
        first = target / "segment-000001.simlog"
        flip_bit(first, 0)
        frames, reader = read(target)
        assert [f.offset for f in frames] == [f["offset"] for f in expected["frames"] if f["segment"] == "segment-000002.simlog"]
        assert [(p.kind, p.path, p.offset, p.length) for p in reader.problems] == [("corrupt", first, 0, first.stat().st_size)]
        assert "not a simic event log segment" in reader.problems[0].detail


class TestCompressedSegments:
    def test_a_compressed_segment_reads_as_its_plain_self(self, tmp_path):
        """compress_segment replaces the segment by NAME.zst, with the same modification time; it reads back as the same
        frames at the same offsets, and `zstd -d` (skipping the chunk index) gives the plain segment back."""
        messages = payloads(6000, size=500)  # about 3 MiB: several chunks
        writer = write_log(tmp_path / "log", messages)
        plain = writer.path.read_bytes()
        mtime = writer.path.stat().st_mtime_ns
        whole = list(LogReader(writer.path))
        compressed = compress_segment(writer.path)
        assert compressed == writer.path.with_name(writer.path.name + ".zst") and not writer.path.exists()
        assert compressed.stat().st_mtime_ns == mtime and compressed.stat().st_size < len(plain) / 4
        frames, reader = read(tmp_path / "log")
        assert [(f.offset, f.recv_ns, f.payload, f.counter) for f in frames] == [(f.offset, f.recv_ns, f.payload, f.counter) for f in whole]
        assert reader.problems == [] and segment_paths(tmp_path / "log") == [compressed]
        if shutil.which("zstd"):
            out = subprocess.run(["zstd", "-d", "-c", str(compressed)], capture_output=True, timeout=60, check=True).stdout
            assert out == plain

    def test_a_damaged_chunk_costs_only_its_frames(self, tmp_path):
        """A flipped bit inside one compressed chunk loses the frames in that chunk (reported, saying compressed data was
        lost); every frame of the other chunks is read."""
        writer = write_log(tmp_path, payloads(6000, size=500))
        whole = list(LogReader(writer.path))
        shutil.copy(writer.path, tmp_path / "plain")
        compressed = compress_segment(writer.path)
        data = bytearray(compressed.read_bytes())
        second_chunk = data.find((0x184D2A53).to_bytes(4, "little"), 1)
        data[second_chunk + 500] ^= 0x40
        compressed.write_bytes(bytes(data))
        frames, reader = read(tmp_path)
        chunk = (COMPRESSED_CHUNK, 2 * COMPRESSED_CHUNK)
        hit = [f for f in whole if f.offset + FRAME_HEAD + len(f.payload) > chunk[0] and f.offset < chunk[1]]
        assert [f.payload for f in frames] == [f.payload for f in whole if f not in hit]
        (problem,) = reader.problems
        assert (problem.kind, problem.offset) == ("corrupt", hit[0].offset)
        copy = FRAME_HEAD + header_end(tmp_path / "plain")
        copies = [b.offset - copy for a, b in zip(whole, whole[1:]) if b.counter == a.counter + 2]
        stretch = range(problem.offset, problem.offset + problem.length)
        lost = sum(f.offset in stretch for f in whole) + sum(c in stretch for c in copies)  # header copies are frames too
        assert f"compressed data lost at {chunk[0]}..{chunk[1]}" in problem.detail and f"{lost} frames lost" in problem.detail

    def test_an_interrupted_compression_leaves_the_segment_as_it_was(self, tmp_path):
        """When stop() says so between chunks, the temporary file is removed and the plain segment stays."""
        writer = write_log(tmp_path, payloads(6000, size=500))
        before = writer.path.read_bytes()
        assert compress_segment(writer.path, stop=lambda: True) is None
        assert [p.name for p in tmp_path.iterdir()] == [writer.path.name] and writer.path.read_bytes() == before

    def test_a_segment_both_plain_and_compressed_is_read_once(self, tmp_path):
        """A segment whose compressed copy exists beside it (compression cut short before the plain file was removed) is
        listed once, plain."""
        writer = write_log(tmp_path, payloads(10))
        shutil.copy(writer.path, tmp_path / "copy")
        compress_segment(writer.path)
        shutil.copy(tmp_path / "copy", writer.path)
        (tmp_path / "copy").unlink()
        assert segment_paths(tmp_path) == [writer.path]
        assert [f.payload for f in LogReader(tmp_path)] == payloads(10)
