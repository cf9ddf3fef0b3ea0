"""Splits Markdown documents into retrieval chunks along headings and paragraphs.

Each chunk keeps its heading path as `section` (e.g. "Cards > Lost or stolen card"). Paragraphs are
packed into chunks of about `chunk_words` words; a paragraph longer than that is split at sentence
ends (the kit's splitter), and a sentence longer than that at word boundaries. A chunk ends at a
heading once it holds at least half of `chunk_words`, so sections stay apart without making
one-line chunks. Every chunk's text is exactly `content[start_char:end_char]`, so a citation can
point into the original document.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from services.kit.text import split_sentences

HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")
WORD = re.compile(r"\S+")
SECTION_SEPARATOR = " > "


@dataclass(frozen=True)
class Chunk:
    """One passage of a document: its heading path, its text and where that text sits in the document."""

    ordinal: int
    section: str
    text: str
    start_char: int
    end_char: int


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    words: int


def _blocks(content: str) -> Iterator[tuple[int, tuple[str, ...], _Span]]:
    """Yield (section number, heading path, paragraph span) for every paragraph, in document order.

    Paragraphs are runs of non-blank lines; a fenced code block is kept whole and its lines are never
    taken for headings.
    """
    headings: list[tuple[int, str]] = []
    paragraph_start: int | None = None
    paragraph_end = 0
    in_fence = False
    position = 0
    section_number = 0

    def close() -> Iterator[tuple[int, tuple[str, ...], _Span]]:
        nonlocal paragraph_start
        if paragraph_start is not None:
            words = len(WORD.findall(content, paragraph_start, paragraph_end))
            yield section_number, tuple(text for _, text in headings), _Span(paragraph_start, paragraph_end, words)
            paragraph_start = None

    for line in content.splitlines(keepends=True):
        line_start, position = position, position + len(line)
        stripped = line.rstrip("\r\n")
        line_end = line_start + len(stripped)
        if FENCE.match(stripped):
            in_fence = not in_fence
        heading = None if in_fence else HEADING.match(stripped)
        if heading:
            yield from close()
            section_number += 1
            level, title = len(heading.group(1)), heading.group(2).strip()
            headings = [(lvl, text) for lvl, text in headings if lvl < level]
            if title:
                headings.append((level, title))
        elif not stripped.strip() and not in_fence:
            yield from close()
        else:
            if paragraph_start is None:
                # Start at the first visible character so offsets never begin on indentation.
                paragraph_start = line_start + (len(stripped) - len(stripped.lstrip()))
            paragraph_end = line_end
    yield from close()


def sentence_spans(content: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) offsets in `content` of the sentences of content[start:end] (the kit's
    abbreviation-aware splitter); text the splitter altered is taken as one last piece."""
    spans: list[tuple[int, int]] = []
    cursor = start
    for sentence in split_sentences(content[start:end]):
        found = content.find(sentence, cursor, end)
        if found < 0:
            break
        spans.append((found, found + len(sentence)))
        cursor = found + len(sentence)
    if content[cursor:end].strip():
        spans.append((cursor, end))
    return spans


def _sentence_spans(content: str, span: _Span) -> list[_Span]:
    return [_Span(begin, finish, 0) for begin, finish in sentence_spans(content, span.start, span.end)]


def _split_long(content: str, span: _Span, limit: int) -> list[_Span]:
    """Split a span of more than `limit` words into sentence-packed pieces of at most `limit` words."""
    pieces: list[_Span] = []
    for sentence in _sentence_spans(content, span):
        words = list(WORD.finditer(content, sentence.start, sentence.end))
        # A sentence longer than the limit is cut into word windows.
        for first in range(0, len(words), limit):
            window = words[first : first + limit]
            pieces.append(_Span(window[0].start(), window[-1].end(), len(window)))
    return _pack(pieces, limit)


def _pack(spans: list[_Span], limit: int) -> list[_Span]:
    """Greedily join consecutive spans while the total stays within `limit` words."""
    packed: list[_Span] = []
    for span in spans:
        if packed and packed[-1].words + span.words <= limit:
            last = packed[-1]
            packed[-1] = _Span(last.start, span.end, last.words + span.words)
        else:
            packed.append(span)
    return packed


def _section_name(paths: list[tuple[str, ...]]) -> str:
    """A chunk's heading path: its one path, or the paths' common ancestor followed by the headings
    below it that the chunk spans, e.g. "Cards > Lost card; Stolen card"."""
    distinct = list(dict.fromkeys(paths))
    if len(distinct) == 1:
        return SECTION_SEPARATOR.join(distinct[0])
    common: list[str] = []
    for level in zip(*distinct):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    below = "; ".join(dict.fromkeys(path[len(common)] for path in distinct if len(path) > len(common)))
    return SECTION_SEPARATOR.join([*common, below] if below else common)


def chunk_markdown(content: str, chunk_words: int) -> list[Chunk]:
    """Split Markdown `content` into chunks of about `chunk_words` words, in document order.

    Headings become the chunks' `section` rather than the start of their text. A chunk ends at a
    heading unless it is still under half of `chunk_words`: then the next section joins it (its
    heading line included in the text) so short sections do not make one-line chunks, and `section`
    names what the joined sections share.
    """
    if chunk_words < 1:
        raise ValueError(f"chunk_words must be at least 1, got {chunk_words}")
    chunks: list[Chunk] = []
    paths: list[tuple[str, ...]] = []
    start = end = words = 0
    current_section = -1

    def flush() -> None:
        if paths:
            chunks.append(Chunk(len(chunks), _section_name(paths), content[start:end], start, end))
            paths.clear()

    for number, path, paragraph in _blocks(content):
        pieces = _split_long(content, paragraph, chunk_words) if paragraph.words > chunk_words else [paragraph]
        for piece in pieces:
            fits = words + piece.words <= chunk_words
            joins = fits if number == current_section else fits and words < chunk_words / 2
            if not (paths and joins):
                flush()
                start, words = piece.start, 0
            paths.append(path)
            end, words, current_section = piece.end, words + piece.words, number
    flush()
    return chunks
