"""The markdown-aware chunker: sections, blocks, sizes, overlap and spans."""

from __future__ import annotations

import itertools

import pytest

from spine.platform.documents.chunking import Chunker

GUIDE = """\
# Guide

Spine runs agents. It keeps tasks in a database.

## Install

Run `make install`. It builds everything.

```bash
# not a heading: inside a fence

make up
```

### Linux

Works on any recent distribution.

## Use

Submit a task.
"""


def test_markdown_is_cut_at_headings_and_keeps_the_heading_path() -> None:
    chunks = Chunker(size=200, overlap=0).split(GUIDE)
    assert [c.heading for c in chunks] == [
        "Guide",
        "Guide > Install",
        "Guide > Install > Linux",
        "Guide > Use",
    ]
    install = chunks[1]
    assert "# not a heading: inside a fence" in install.text
    assert install.text.endswith("```")
    assert chunks[3].embedding_text == "Guide > Use\n\nSubmit a task."
    assert [c.seq for c in chunks] == [0, 1, 2, 3]


def test_every_chunk_is_its_span_of_the_original_text() -> None:
    text = GUIDE * 3
    for chunk in Chunker(size=60, overlap=20).split(text):
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip()


def test_long_sections_are_packed_to_the_size_with_overlap() -> None:
    sentences = [f"Sentence number {i} says something." for i in range(60)]
    text = " ".join(sentences)
    chunker = Chunker(size=200, overlap=50)
    chunks = chunker.split(text, markdown=False)
    assert len(chunks) > 5
    assert all(len(c.text) <= chunker.size + chunker.overlap for c in chunks)
    for before, after in itertools.pairwise(chunks):
        assert after.start < before.end  # they overlap ...
        assert not after.text[0].isspace()
        assert text[after.start - 1] == " "  # ... from a word's beginning
    covered = "".join(text[c.start : c.end] for c in chunks)
    assert all(sentence in covered for sentence in sentences)


def test_a_long_block_without_sentences_is_cut_at_spaces_then_anywhere() -> None:
    words = " ".join(["word"] * 100)
    chunks = Chunker(size=50, overlap=0).split(words, markdown=False)
    assert all(len(c.text) <= 50 for c in chunks)
    assert all(c.text.startswith("word") and c.text.endswith("word") for c in chunks)
    unbroken = "x" * 130
    pieces = Chunker(size=50, overlap=0).split(unbroken, markdown=False)
    assert [len(p.text) for p in pieces] == [50, 50, 30]


def test_plain_text_ignores_markdown_and_empty_text_has_no_chunks() -> None:
    chunks = Chunker(size=1000, overlap=0).split(GUIDE, markdown=False)
    assert len(chunks) == 1
    assert chunks[0].heading is None
    assert chunks[0].text.startswith("# Guide")
    assert Chunker().split("") == []
    assert Chunker().split("  \n\n \t") == []
    assert Chunker().split("# Only a heading\n") == []


def test_paragraphs_fill_a_chunk_before_a_new_one_starts() -> None:
    text = "\n\n".join(f"Paragraph {i}." for i in range(10))
    chunks = Chunker(size=40, overlap=0).split(text, markdown=False)
    assert [c.text.count("Paragraph") for c in chunks] == [3, 3, 3, 1]
    assert "\n\n" in chunks[0].text


@pytest.mark.parametrize(
    ("size", "overlap", "problem"),
    [(10, 0, "at least 20"), (100, 100, "less than the chunk size"), (100, -1, "at least 0")],
)
def test_impossible_sizes_are_refused(size: int, overlap: int, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Chunker(size=size, overlap=overlap)
