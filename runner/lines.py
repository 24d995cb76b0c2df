"""Lines from a stream of chunks in time linear in the input and memory bounded by one line's cap.

A rank may print megabytes without a newline (a progress bar redrawn with \\r, a tensor dumped in
one print): each line keeps its first LINE_CAP bytes (characters, for text) and says how much was
cut, so neither the shim nor the runner ever holds more than LINE_CAP of one line.
"""

from __future__ import annotations

from typing import Generic, TypeVar

LINE_CAP = 64 * 1024
AnyStr = TypeVar("AnyStr", str, bytes)


class BoundedLines(Generic[AnyStr]):
    """feed() chunks, get back the lines they complete (without their newline); finish() gives the last,
    unterminated one. Each chunk is scanned once: no re-splitting of what was buffered."""

    def __init__(self, empty: AnyStr, cap: int = LINE_CAP):
        self.empty: AnyStr = empty
        self.cap = cap
        self.newline: AnyStr = b"\n" if isinstance(empty, bytes) else "\n"
        self.unit = "bytes" if isinstance(empty, bytes) else "characters"
        self.head: list[AnyStr] = []
        self.kept = self.cut = 0
        self.open = False  # a line has started and not ended

    def feed(self, chunk: AnyStr) -> list[AnyStr]:
        lines: list[AnyStr] = []
        start = 0
        while True:
            end = chunk.find(self.newline, start)
            self._keep(chunk[start:] if end < 0 else chunk[start:end])
            if end < 0:
                return lines
            lines.append(self._end_line())
            start = end + 1

    def finish(self) -> AnyStr | None:
        """The last line, when the stream ended without a newline."""
        return self._end_line() if self.open else None

    def _keep(self, piece: AnyStr) -> None:
        if not piece:
            return
        self.open = True
        room = max(self.cap - self.kept, 0)
        if room:
            self.head.append(piece[:room])
            self.kept += min(room, len(piece))
        self.cut += max(len(piece) - room, 0)

    def _end_line(self) -> AnyStr:
        line = self.empty.join(self.head)
        if self.cut:
            note = f" [... {self.cut} {self.unit} cut]"
            line += note.encode() if isinstance(line, bytes) else note
        self.head, self.kept, self.cut, self.open = [], 0, 0, False
        return line
