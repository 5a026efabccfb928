"""What every prompt and box phrase must be before a tokenizer sees it. Torch-free.

Bytes that are not UTF-8 on the command line reach Python as lone surrogates (PEP 383), and so does a "\\ud800"
escape in JSON; the tokenizers library then fails with a TypeError deep inside."""

from __future__ import annotations

import os


def not_utf8(text: str) -> str | None:
    """Why `text` cannot be encoded as UTF-8 (where the first bad character is), or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"character {exc.start + 1} is not text (bytes that are not UTF-8, or a lone surrogate)"
    return None


def from_command_line(arg: str) -> str:
    """A command-line argument as typed: where the locale's encoding could not decode its bytes (ASCII, under
    LANG=C without Python's UTF-8 mode) they arrive as surrogates (PEP 383); bytes that are UTF-8 are read as UTF-8,
    anything else is left as it came, for not_utf8 to refuse. argparse `type` for prompts and phrases."""
    if not any("\udc80" <= c <= "\udcff" for c in arg):
        return arg
    try:
        return os.fsencode(arg).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return arg
