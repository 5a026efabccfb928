"""Parsing a JSON document dbunet does not trust (a manifest, a config file, a bench baseline, a model folder's
config, an HTTP body): whatever makes it unreadable (not UTF-8, not JSON, nested past Python's recursion limit) is
one error of the caller's kind, never the parser's traceback. A name given twice in one object is refused too:
parsers disagree on which of the two counts (Python's, the last), so the document means two things. Torch-free."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


class _Duplicate(ValueError):
    pass


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _Duplicate(f"{name!r} given twice in one object")
            seen.add(name)
    return obj


def loads(data: str | bytes, refuse: Callable[[str], Exception]) -> Any:
    """The parsed document; else raises refuse("not valid JSON (why)"), which the caller words into its line."""
    try:
        # UTF-8, a leading byte-order mark ignored (RFC 8259 lets a parser ignore one; an editor may write it)
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
        return json.loads(text, object_pairs_hook=_unique_names)
    except RecursionError:  # e.g. 64 KiB of '[': the parser recurses once per level
        raise refuse("not valid JSON (nested too deeply)") from None
    except _Duplicate as exc:
        raise refuse(f"not valid JSON ({exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise refuse(f"not valid JSON ({str(exc)[:80]})") from None
