"""Parsing a JSON document dbunet does not trust (a manifest, a config file, a bench baseline, a model folder's
config, an HTTP body): whatever makes it unreadable (not UTF-8, not JSON, nested past Python's recursion limit) is
one error of the caller's kind, never the parser's traceback. Torch-free."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def loads(data: str | bytes, refuse: Callable[[str], Exception]) -> Any:
    """The parsed document; else raises refuse("not valid JSON (why)"), which the caller words into its line."""
    try:
        # UTF-8, a leading byte-order mark ignored (RFC 8259 lets a parser ignore one; an editor may write it)
        return json.loads(data.decode("utf-8-sig") if isinstance(data, bytes) else data)
    except RecursionError:  # e.g. 64 KiB of '[': the parser recurses once per level
        raise refuse("not valid JSON (nested too deeply)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise refuse(f"not valid JSON ({str(exc)[:80]})") from None
