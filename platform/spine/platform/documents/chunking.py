"""Cutting a document into chunks to embed: markdown-aware, with overlap.

A markdown document is first cut into sections at its ATX headings (``#`` to ``######``, not
inside fenced code), each chunk remembering its heading path (``Guide > Install``). A section
is cut into blocks at blank lines, a fenced code block staying whole; blocks are packed into
chunks of about ``size`` characters. A block too large for one chunk is cut at sentence ends,
then at spaces, then anywhere. Each chunk of a section after its first repeats the last
``overlap`` characters of the one before (from a word boundary), so a passage cut in two is
still found whole in one of them. Plain text is one section cut at blank lines the same way.

Every chunk keeps its span (``start``, ``end``) in the original text, and its text is exactly
``text[start:end]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Chunk", "Chunker"]

_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+")


@dataclass(slots=True, kw_only=True, frozen=True)
class Chunk:
    """One piece of a document: its text, its place, and the headings above it."""

    seq: int
    text: str
    start: int
    end: int
    heading: str | None = None

    @property
    def embedding_text(self) -> str:
        """What is embedded: the heading path, then the text (the path helps retrieval)."""
        return f"{self.heading}\n\n{self.text}" if self.heading else self.text


@dataclass(slots=True, kw_only=True, frozen=True)
class _Section:
    heading: str | None
    start: int
    end: int


class Chunker:
    """Cuts texts into chunks of about ``size`` characters overlapping by ``overlap``."""

    def __init__(self, *, size: int = 800, overlap: int = 120) -> None:
        if size < 20:
            raise ValueError("a chunk must hold at least 20 characters")
        if not 0 <= overlap < size:
            raise ValueError("the overlap must be at least 0 and less than the chunk size")
        self.size = size
        self.overlap = overlap

    def split(self, text: str, *, markdown: bool = True) -> list[Chunk]:
        """Return the chunks of ``text`` in order; none when it has no text at all."""
        sections = _sections(text) if markdown else [_Section(heading=None, start=0, end=len(text))]
        chunks: list[Chunk] = []
        for section in sections:
            for start, end in self._pack(text, section):
                chunks.append(
                    Chunk(
                        seq=len(chunks),
                        text=text[start:end],
                        start=start,
                        end=end,
                        heading=section.heading,
                    )
                )
        return chunks

    def _pack(self, text: str, section: _Section) -> Iterator[tuple[int, int]]:
        start: int | None = None
        end = 0
        for piece_start, piece_end in self._pieces(text, section):
            if start is None:
                start, end = piece_start, piece_end
            elif piece_end - start <= self.size:
                end = piece_end
            else:
                yield start, end
                start, end = self._overlap_start(text, start, end, piece_start), piece_end
        if start is not None:
            yield start, end

    def _overlap_start(self, text: str, start: int, end: int, next_start: int) -> int:
        if not self.overlap:
            return next_start
        cut = max(start, end - self.overlap)
        # From a word's beginning, never from the middle of one.
        while cut < end and not text[cut - 1].isspace() and cut > start:
            cut += 1
        while cut < end and text[cut].isspace():
            cut += 1
        return cut if cut < end else next_start

    def _pieces(self, text: str, section: _Section) -> Iterator[tuple[int, int]]:
        for block_start, block_end in _blocks(text, section.start, section.end):
            if block_end - block_start <= self.size:
                yield block_start, block_end
                continue
            for sentence_start, sentence_end in _sentences(text, block_start, block_end):
                yield from _cut(text, sentence_start, sentence_end, self.size)


def _sections(text: str) -> list[_Section]:
    sections: list[_Section] = []
    path: list[tuple[int, str]] = []
    body_start = 0
    fence: str | None = None
    for line_start, line in _lines(text):
        opened = _FENCE.match(line)
        if opened:
            marker = opened.group(1)
            if fence is None:
                fence = marker[0] * 3
            elif marker.startswith(fence):
                fence = None
            continue
        if fence is not None:
            continue
        heading = _HEADING.match(line)
        if heading is None:
            continue
        sections.append(_Section(heading=_title(path), start=body_start, end=line_start))
        level = len(heading.group(1))
        path = [(lvl, name) for lvl, name in path if lvl < level] + [
            (level, heading.group(2).strip())
        ]
        body_start = line_start + len(line)
    sections.append(_Section(heading=_title(path), start=body_start, end=len(text)))
    return [s for s in sections if text[s.start : s.end].strip()]


def _title(path: list[tuple[int, str]]) -> str | None:
    return " > ".join(name for _, name in path) or None


def _lines(text: str) -> Iterator[tuple[int, str]]:
    offset = 0
    for line in text.splitlines(keepends=True):
        yield offset, line.rstrip("\r\n")
        offset += len(line)


def _blocks(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Yield the stripped spans between blank lines; a fenced block is never cut."""
    block: int | None = None
    last = start
    fence: str | None = None
    for line_start, line in _lines(text[start:end]):
        at = start + line_start
        opened = _FENCE.match(line)
        if opened:
            marker = opened.group(1)
            if fence is None:
                fence = marker[0] * 3
            elif marker.startswith(fence):
                fence = None
        if not line.strip() and fence is None:
            if block is not None:
                yield _stripped(text, block, last)
                block = None
            continue
        if block is None:
            block = at
        last = at + len(line)
    if block is not None:
        yield _stripped(text, block, last)


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _sentences(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    at = start
    for gap in _SENTENCE_END.finditer(text, start, end):
        if gap.start() > at:
            yield at, gap.start()
        at = gap.end()
    if at < end:
        yield at, end


def _cut(text: str, start: int, end: int, size: int) -> Iterator[tuple[int, int]]:
    """Cut a span longer than ``size`` at spaces, or anywhere when a word is longer."""
    while end - start > size:
        limit = start + size
        space = text.rfind(" ", start + size // 2, limit + 1)
        cut = space if space > start else limit
        yield _stripped(text, start, cut)
        start = cut
        while start < end and text[start].isspace():
            start += 1
    if start < end:
        yield start, end
