"""The passage a cross-encoder reads for a hit: one definition for serving and for training.

A reranker scores what it is shown, so the text it is trained on and the text
it ranks at serving time must be built the same way; the rerank stage and the
reranker trainer both call passage_text(). Kept free of model imports, so the
trainer's data preparation can use it cheaply.
"""

from __future__ import annotations


def passage_text(title: str, text: str) -> str:
    """The chunk's text, preceded by its document's title on a line of its own when that adds something.

    A title often says what a chunk is about when the chunk itself does not (a
    chunk from the middle of a long document). It is left out when empty, and
    when the text already begins with it (a first chunk that opens with its
    heading), so the cross-encoder does not read it twice.
    """
    title = title.strip()
    if not title or text.lstrip().startswith(title):
        return text
    return f"{title}\n{text}"
