"""What every prompt and box phrase must be before a tokenizer sees it. Torch-free.

Bytes that are not UTF-8 on the command line reach Python as lone surrogates (PEP 383), and so does a "\\ud800"
escape in JSON; the tokenizers library then fails with a TypeError deep inside."""

from __future__ import annotations


def not_utf8(text: str) -> str | None:
    """Why `text` cannot be encoded as UTF-8 (where the first bad character is), or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"character {exc.start + 1} is not text (bytes that are not UTF-8, or a lone surrogate)"
    return None
