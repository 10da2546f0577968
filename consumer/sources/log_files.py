"""The recorded source: frames of one or more event logs, in arrival order.

Logs of several nodes replay together, merged by arrival time. Torn tails and corrupt stretches
are collected from every reader, never served as data.
"""

from __future__ import annotations

import heapq
import os
from typing import Iterator, Sequence

from simic.schemas.eventlog import Frame, LogProblem, LogReader

__all__ = ["LogFilesSource"]


class LogFilesSource:
    """Iterates frames of log files or directories (merged by ``recv_ns`` when there are several)."""

    def __init__(self, targets: Sequence[str | os.PathLike[str]]) -> None:
        if not targets:
            raise ValueError("no log given")
        self.readers = [LogReader(target) for target in targets]

    def __iter__(self) -> Iterator[Frame]:
        if len(self.readers) == 1:
            return iter(self.readers[0])
        return heapq.merge(*self.readers, key=lambda frame: frame.recv_ns)

    @property
    def problems(self) -> list[LogProblem]:
        return [problem for reader in self.readers for problem in reader.problems]
