"""The log reader against damage everywhere: every cut point, every single-bit flip, random flips across
segments, duplicated and concatenated segment files, junk in the log directory.

``tests/schemas/test_eventlog.py`` covers chosen cases (a few cut points of the last frame, one flip per
field of a middle frame, one junk stretch, a random property on one segment). Here the damage is
exhaustive or spans several segments, and expectations are exact: which frames come back, and which
problems are reported at which offsets. A few samples also go through ``simic-consumer inspect --json``
and ``replay --json``.

The logs are format 2 (what ``LogWriter`` writes): a segment is its header, frame 0 (a copy of the
header, never served) and the frames written. Damage to the header costs the header's bytes (the
reader takes the key from the copy); damage to a frame costs that frame, the copy included.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from simic.schemas import LogFormatError, LogReader, LogWriter, encode_message
from simic.schemas.eventlog import FRAME_MESSAGE, FRAME_OVERHEAD, FRAME_TICK, LOG_MAGIC, Frame, segment_paths

FRAME_HEAD = FRAME_OVERHEAD
"""Bytes of a frame before its payload: marker, type, length, counter, recv_ns, crc."""
RUN = "log-fuzz"
T0 = 1_700_000_000_000_000_000


def heartbeat(seq: int) -> bytes:
    return encode_message(RUN, 0, 1, [[7, seq, seq, seq]])


def groups() -> list[list[tuple[bytes, int]]]:
    """Three segments' worth of ``(payload, frame type)``: messages, a clock tick, an empty payload, and
    payloads holding the frame marker and the log magic (a reader must not take them for structure)."""
    return [
        [(heartbeat(0), FRAME_MESSAGE), (b"", FRAME_TICK), (heartbeat(1), FRAME_MESSAGE)],
        [(b"x\xd3SFx" + LOG_MAGIC, FRAME_MESSAGE), (heartbeat(2), FRAME_MESSAGE), (b"", FRAME_MESSAGE), (heartbeat(3), FRAME_MESSAGE)],
        [(heartbeat(4), FRAME_MESSAGE), (b"", FRAME_TICK)],
    ]


def key(frame: Frame) -> tuple[int, int, bytes]:
    """What identifies a frame wherever it lies (every frame has its own recv_ns)."""
    return frame.recv_ns, frame.type, frame.payload


def end(frame: Frame) -> int:
    return frame.offset + FRAME_HEAD + len(frame.payload)


def problems(reader: LogReader) -> list[tuple[str, str, int, int]]:
    return [(p.kind, p.path.name, p.offset, p.length) for p in reader.problems]


@dataclass(frozen=True)
class Unit:
    """A stretch of a segment the reader treats as one piece: its header, the header's copy (frame 0) or a frame."""

    what: str
    """``header``, ``copy`` or ``frame``."""
    start: int
    end: int
    frame: Frame | None = None


@dataclass
class Log:
    directory: Path
    paths: list[Path]
    frames: list[Frame]
    data: dict[Path, bytes]

    def frames_of(self, path: Path) -> list[Frame]:
        return [f for f in self.frames if f.path == path]

    def header_end(self, path: Path) -> int:
        """Where the first frame that is data starts (after the header and its copy)."""
        return self.frames_of(path)[0].offset

    def units(self, path: Path, base: int = 0) -> list[Unit]:
        """The header, its copy and the frames of a segment, at their offsets (plus ``base``)."""
        header = 18 + struct.unpack_from("<I", self.data[path], 14)[0] + 4
        copy = header + FRAME_HEAD + header
        assert copy == self.header_end(path), "a copy of the header after frame 0: these logs are smaller than that"
        return [Unit("header", base, base + header), Unit("copy", base + header, base + copy)] + [
            Unit("frame", base + f.offset, base + end(f), f) for f in self.frames_of(path)]


def write_log(directory: Path, segments: list[list[tuple[bytes, int]]] | None = None) -> Log:
    """One writer per segment (a writer never appends to an old segment: each restart starts the next)."""
    recv_ns = T0
    for group in segments or groups():
        with LogWriter(directory) as writer:
            for payload, frame_type in group:
                writer.write(payload, recv_ns, frame_type)
                recv_ns += 1
    reader = LogReader(directory)
    frames = list(reader)
    assert reader.problems == []
    paths = segment_paths(directory)
    return Log(directory, paths, frames, {p: p.read_bytes() for p in paths})


def concatenated(log: Log, target: Path, order: list[Path] | None = None) -> tuple[bytes, list[Unit]]:
    """``cat`` of the segments: its bytes and every unit at its offset in it."""
    data, units = b"", []
    for path in order or log.paths:
        units += log.units(path, len(data))
        data += log.data[path]
    target.write_bytes(data)
    return data, units


def expected_after_damage(units: list[Unit], damaged: set[int], size: int, name: str) -> tuple[list, list] | None:
    """Frames read and problems reported when the units starting at the ``damaged`` offsets are damaged: each run of
    damaged units is one corrupt stretch up to the next intact unit, or the torn tail when none follows. None when
    some segment lost both its header and its copy (its frames cannot be checked: not modelled here)."""
    for header, copy in zip(units, units[1:]):
        if header.what == "header" and header.start in damaged and copy.start in damaged:
            return None
    kept, reported, run_start = [], [], None
    for unit in units:
        if unit.start in damaged:
            run_start = unit.start if run_start is None else run_start
            continue
        if run_start is not None:
            reported.append(("corrupt", name, run_start, unit.start - run_start))
            run_start = None
        if unit.frame is not None:
            kept.append(key(unit.frame))
    if run_start is not None:
        reported.append(("torn_tail", name, run_start, size - run_start))
    return kept, reported


def hit(units: list[Unit], byte: int) -> int:
    """The start of the unit holding ``byte``."""
    return max(u.start for u in units if u.start <= byte)


class TestEveryCutPoint:
    def test_every_cut_of_every_segment_keeps_every_whole_frame(self, tmp_path):
        """Cut anywhere in any segment of a directory: the frames wholly before the cut and every frame of the other
        segments are read; the cut is one torn tail at the start of the unit it cuts (header, its copy or a frame), or
        nothing when it falls between units."""
        log = write_log(tmp_path / "log")
        for path in log.paths:
            data, units = log.data[path], log.units(path)
            for cut in range(len(data) + 1):
                path.write_bytes(data[:cut])
                reader = LogReader(log.directory)
                got = [key(f) for f in reader]
                assert got == [key(f) for f in log.frames if f.path != path or end(f) <= cut], (path.name, cut)
                torn = next((u for u in units if u.start < cut < u.end), None)
                if cut == 0:
                    want = [("torn_tail", path.name, 0, 0)]
                elif torn is not None:
                    want = [("torn_tail", path.name, torn.start, cut - torn.start)]
                else:
                    want = []
                assert problems(reader) == want, (path.name, cut)
            path.write_bytes(data)

    def test_every_cut_of_concatenated_segments_keeps_every_whole_frame(self, tmp_path):
        """Segments joined with cat, then cut anywhere (a copy interrupted): every whole frame before the cut is read,
        and a cut inside a frame, a header or a header's copy is one torn tail at its start."""
        log = write_log(tmp_path / "log")
        target = tmp_path / "joined.simlog"
        data, units = concatenated(log, target)
        for cut in range(len(data) + 1):
            target.write_bytes(data[:cut])
            reader = LogReader(target)
            assert [key(f) for f in reader] == [key(u.frame) for u in units if u.frame is not None and u.end <= cut], cut
            starts = [u.start for u in units if u.start < cut < u.end or u.start == cut == 0]
            assert problems(reader) == [("torn_tail", target.name, start, cut - start) for start in starts], cut


class TestBitFlips:
    def test_every_single_bit_flip_costs_its_own_unit_only(self, tmp_path):
        """Flip each bit of a segment in turn: never a LogFormatError; a flip in the header is one corrupt stretch over
        the header, every frame read (its copy gives the key); a flip in the copy or a frame costs exactly that unit,
        reported at its offset up to the next unit (the torn tail for the last one), and every other frame is read."""
        log = write_log(tmp_path / "log", [groups()[0] + groups()[1]])
        (path,) = log.paths
        data, units = log.data[path], log.units(path)
        outcomes = {"header": 0, "copy": 0, "frame": 0}
        for bit in range(len(data) * 8):
            damaged = bytearray(data)
            damaged[bit // 8] ^= 1 << (bit % 8)
            path.write_bytes(damaged)
            reader = LogReader(path)
            got = [key(f) for f in reader]
            unit = next(u for u in units if u.start == hit(units, bit // 8))
            assert (got, problems(reader)) == expected_after_damage(units, {unit.start}, len(data), path.name), bit
            outcomes[unit.what] += 1
        assert outcomes == {what: sum(8 * (u.end - u.start) for u in units if u.what == what) for what in outcomes}

    @pytest.mark.parametrize("joined", [False, True], ids=["directory", "concatenated"])
    def test_random_flips_across_segments_lose_only_damaged_frames(self, tmp_path, joined):
        """Several random flips over three segments (a directory, or one file of them joined): the reader raises
        nothing; every frame it yields was written, in order; exactly the intact frames come back and each run of
        damaged units is one problem at its offset (unless a segment lost both its header and its copy: then its
        frames cannot be checked and are not served)."""
        log = write_log(tmp_path / "log", [group * 4 for group in groups()])  # headers a small part of the bytes
        rng = random.Random(20240812)
        if joined:
            target = tmp_path / "joined.simlog"
            data, units = concatenated(log, target)
            files = [(target, data, units)]
        else:
            files = [(p, log.data[p], log.units(p)) for p in log.paths]
        everything = [key(f) for f in log.frames]
        exact = 0
        for trial in range(300):
            flips = {}
            for _ in range(rng.randint(1, 8)):
                which = rng.randrange(len(files))
                flips.setdefault(which, set()).add(rng.randrange(len(files[which][1]) * 8))
            want_frames, want_problems, modelled = [], [], True
            for index, (path, data, units) in enumerate(files):
                bits = flips.get(index, set())
                damaged = bytearray(data)
                for bit in bits:
                    damaged[bit // 8] ^= 1 << (bit % 8)
                path.write_bytes(damaged)
                expected = expected_after_damage(units, {hit(units, bit // 8) for bit in bits}, len(data), path.name)
                if expected is None:
                    modelled = False
                else:
                    want_frames += expected[0]
                    want_problems += expected[1]
            reader = LogReader(files[0][0] if joined else log.directory)
            got = [key(f) for f in reader]
            position = iter(everything)
            assert all(frame in position for frame in got), f"trial {trial}: a frame never written, or out of order"
            if modelled:
                assert got == want_frames, trial
                assert problems(reader) == want_problems, trial
                exact += 1
            for path, data, _ in files:
                path.write_bytes(data)
        assert exact > 250

    def test_a_frame_shaped_payload_is_never_served_after_damage_to_its_carrier(self, tmp_path):
        """A sender controls the bytes of what it sends, and the log stores them verbatim: a payload may hold a whole,
        valid frame. When the carrier frame's head is damaged, resync must not serve the frame inside it (it does not
        hold with this segment's key)."""
        inner = tmp_path / "inner"
        with LogWriter(inner) as writer:
            writer.write(b"FORGED", 42)
        (inner_path,) = segment_paths(inner)
        forged = inner_path.read_bytes()[next(iter(LogReader(inner_path))).offset :]
        log = write_log(tmp_path / "log", [[(heartbeat(0), FRAME_MESSAGE), (b"x" + forged, FRAME_MESSAGE), (heartbeat(1), FRAME_MESSAGE)]])
        (path,) = log.paths
        carrier = log.frames[1]
        damaged = bytearray(log.data[path])
        damaged[carrier.offset + 12] ^= 1  # recv_ns: only the checksum knows
        path.write_bytes(damaged)
        reader = LogReader(path)
        assert [f.payload for f in reader] == [heartbeat(0), heartbeat(1)]
        assert problems(reader) == [("corrupt", path.name, carrier.offset, end(carrier) - carrier.offset)]

    def test_a_whole_forged_segment_in_a_payload_is_never_served_either(self, tmp_path):
        """A payload holding a complete forged segment (header, copy, frame) with its own key: damage to the carrier's
        head still resumes at the next real frame, in a segment file and in a file of joined segments alike."""
        inner = tmp_path / "inner"
        with LogWriter(inner) as writer:
            writer.write(b"FORGED", 42)
        forged_segment = segment_paths(inner)[0].read_bytes()
        log = write_log(tmp_path / "log", [[(heartbeat(0), FRAME_MESSAGE), (b"x" + forged_segment, FRAME_MESSAGE), (heartbeat(1), FRAME_MESSAGE)]])
        (path,) = log.paths
        carrier = log.frames[1]
        damaged = bytearray(log.data[path])
        damaged[carrier.offset + 12] ^= 1
        for target in (path, tmp_path / "joined.simlog"):
            target.write_bytes(damaged)
            assert [f.payload for f in LogReader(target)] == [heartbeat(0), heartbeat(1)], target.name


class TestDuplicatedAndJoinedSegments:
    def test_joined_in_any_order_or_twice_reads_every_frame_in_file_order(self, tmp_path):
        """Segments joined in reverse order, or one segment joined to itself, read as all their frames in file order
        with nothing reported."""
        log = write_log(tmp_path / "log")
        for name, order in [("reversed", log.paths[::-1]), ("twice", [log.paths[1], log.paths[1]])]:
            target = tmp_path / f"{name}.simlog"
            _, units = concatenated(log, target, order)
            reader = LogReader(target)
            assert [key(f) for f in reader] == [key(u.frame) for u in units if u.frame is not None] and reader.problems == [], name

    def test_junk_between_joined_segments_is_one_corrupt_stretch(self, tmp_path):
        """Junk between two joined segments is reported from its first byte to the next segment's header, and every
        frame of both segments is read."""
        log = write_log(tmp_path / "log")
        first, second = log.data[log.paths[0]], log.data[log.paths[1]]
        junk = random.Random(7).randbytes(300).replace(b"\xd3", b"\x00")
        target = tmp_path / "junk.simlog"
        target.write_bytes(first + junk + second)
        reader = LogReader(target)
        assert [key(f) for f in reader] == [key(f) for f in log.frames_of(log.paths[0]) + log.frames_of(log.paths[1])]
        assert problems(reader) == [("corrupt", target.name, len(first), len(junk))]

    def test_a_segment_copied_under_a_later_name_is_read_twice_and_counted_as_duplicates(self, tmp_path, cli):
        """A segment file duplicated in the log directory is read twice by the reader; inspect counts its events once
        and the second copies as duplicates (the sequence numbers say so)."""
        log = write_log(tmp_path / "log")
        shutil.copy(log.paths[1], log.directory / "segment-000009.simlog")
        frames = list(LogReader(log.directory))
        assert [key(f) for f in frames] == [key(f) for f in log.frames + log.frames_of(log.paths[1])]
        summary = cli.inspect_json(log.directory)
        (session,) = summary["runs"][RUN]
        assert (session["received"], session["duplicates"], session["lost"]) == (5, 2, 0)
        assert summary["log_problems"] == []


class TestJunkInTheLogDirectory:
    @pytest.fixture
    def log(self, tmp_path) -> Log:
        """A three-segment log directory beside the files a daemon and people leave there."""
        log = write_log(tmp_path / "log")
        d = log.directory
        (d / "alerts.jsonl").write_text('{"type": "alert"}\n')
        (d / "consumer-state.json").write_text("{}")
        (d / "notes.txt").write_bytes(os.urandom(100))
        (d / "segment-1.simlog").write_bytes(b"junk")  # too few digits
        (d / "segment-000004.simlog.tmp").write_bytes(b"junk")
        (d / ".segment-000005.simlog").write_bytes(b"junk")
        write_log(d / "dead-letter", [[(b"refused", FRAME_MESSAGE)]])
        return log

    def test_files_that_are_not_segments_are_ignored(self, log):
        """Only ``segment-NNNNNN.simlog`` files are read: every frame comes back and nothing is reported."""
        reader = LogReader(log.directory)
        assert [key(f) for f in reader] == [key(f) for f in log.frames] and reader.problems == []

    @pytest.mark.parametrize("kind", ["directory", "dangling symlink"])
    def test_something_named_like_a_segment_that_is_no_file_is_ignored(self, log, kind, cli):
        """A directory or a dangling symlink with a segment's name is not a segment: no exception, every frame read
        (through the API and ``inspect --json``)."""
        odd = log.directory / "segment-000007.simlog"
        if kind == "directory":
            odd.mkdir()
        else:
            odd.symlink_to(log.directory / "nowhere")
        reader = LogReader(log.directory)
        assert [key(f) for f in reader] == [key(f) for f in log.frames] and reader.problems == []
        assert cli.inspect_json(log.directory)["messages"] == sum(f.type == FRAME_MESSAGE for f in log.frames)

    def test_an_empty_segment_is_a_torn_header_and_later_segments_are_read(self, log):
        """A zero-byte segment between two (a crash right after creating it) is reported and costs nothing else."""
        log.paths[2].rename(log.directory / "segment-000009.simlog")
        (log.directory / "segment-000005.simlog").write_bytes(b"")
        reader = LogReader(log.directory)
        assert [key(f) for f in reader] == [key(f) for f in log.frames]
        assert problems(reader) == [("torn_tail", "segment-000005.simlog", 0, 0)]

    def test_a_segment_named_file_of_junk_is_reported_and_the_others_are_read(self, log, cli):
        """A file with a segment's name that is not a log is one corrupt stretch naming it; every frame of the real
        segments is read, and inspect and replay list it and count every message."""
        junk = log.directory / "segment-000006.simlog"
        junk.write_bytes(b"this is not a log, just junk bytes")
        reader = LogReader(log.directory)
        assert [key(f) for f in reader] == [key(f) for f in log.frames]
        assert problems(reader) == [("corrupt", junk.name, 0, junk.stat().st_size)]
        assert "not a simic event log segment" in reader.problems[0].detail
        messages = sum(f.type == FRAME_MESSAGE for f in log.frames)
        for summary in (cli.inspect_json(log.directory), cli.replay_json(log.directory)[1]):
            assert summary["messages"] == messages
            assert [(p["path"], p["kind"]) for p in summary["log_problems"]] == [(str(junk), "corrupt")]

    def test_a_file_of_junk_given_alone_is_a_format_error_naming_it(self, tmp_path, cli):
        """Given on its own, a file that is not a log raises LogFormatError naming it; inspect and replay say so in one
        line and exit 1, without a traceback."""
        junk = tmp_path / "segment-000006.simlog"
        junk.write_bytes(b"this is not a log, just junk bytes")
        with pytest.raises(LogFormatError, match=r"segment-000006\.simlog is not a simic event log"):
            list(LogReader(junk))
        for command in ("inspect", "replay"):
            result = cli.run(command, str(junk), "--json", check=False)
            assert result.returncode == 1
            assert "segment-000006.simlog is not a simic event log" in result.stderr and "Traceback" not in result.stderr


class TestThroughTheCli:
    def test_inspect_and_replay_report_damage_with_offsets_and_count_every_intact_message(self, tmp_path, cli):
        """A middle segment cut short and a flipped bit in a frame of another: inspect --json and replay --json count
        exactly the intact messages and list both problems at the reader's offsets."""
        log = write_log(tmp_path / "log")
        torn = log.frames_of(log.paths[1])[-1]
        os.truncate(log.paths[1], torn.offset + 7)
        flipped = log.frames_of(log.paths[0])[0]
        damaged = bytearray(log.data[log.paths[0]])
        damaged[flipped.offset + FRAME_HEAD + 2] ^= 0x10
        log.paths[0].write_bytes(damaged)
        reader = LogReader(log.directory)
        intact = [f for f in reader]
        assert [key(f) for f in intact] == [key(f) for f in log.frames if f not in (torn, flipped)]
        want = [{"path": str(p.path), "offset": p.offset, "length": p.length, "kind": p.kind, "detail": p.detail} for p in reader.problems]
        assert [(w["kind"], w["offset"]) for w in want] == [("corrupt", flipped.offset), ("torn_tail", torn.offset)]
        messages = sum(f.type == FRAME_MESSAGE for f in intact)
        inspected = cli.inspect_json(log.directory)
        _, replayed = cli.replay_json(log.directory)
        for summary in (inspected, replayed):
            assert summary["messages"] == messages and summary["log_problems"] == want
            assert summary["rejected_messages"] == {"malformed_msgpack": 2}  # b"x\xd3SF..." and b""
