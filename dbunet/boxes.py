"""Layout boxes: a normalized rectangle and the phrase that names what goes in it. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dbunet.errors import InputError
from dbunet.scalars import is_real, python_scalar
from dbunet.text import not_utf8

MAX_PHRASE_CHARS = 1000  # a box phrase is a few words; the text encoder reads 77 tokens of it at most


def as_boxes(boxes) -> tuple[Box, ...]:
    """What the API takes for `boxes`: None or nothing, one Box or 'x0,y0,x1,y1:phrase', or a list of either."""
    if boxes is None:
        return ()
    if isinstance(boxes, Box | str):
        boxes = (boxes,)
    if not isinstance(boxes, list | tuple):
        raise InputError(f"boxes must be a list of Box or 'x0,y0,x1,y1:phrase' strings, got {type(boxes).__name__}")
    out = []
    for b in boxes:
        if isinstance(b, str):
            out.append(Box.parse(b))
        elif isinstance(b, Box):
            out.append(b)
        else:
            raise InputError(f"a box must be a Box or an 'x0,y0,x1,y1:phrase' string, got {type(b).__name__} {b!r}")
    return tuple(out)


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float
    phrase: str

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "x1", "y1"):  # np.float32 coordinates are numbers too
            object.__setattr__(self, name, python_scalar(getattr(self, name)))
        coords = (self.x0, self.y0, self.x1, self.y1)
        if not isinstance(self.phrase, str):
            raise InputError(f"box phrase must be a string, got {type(self.phrase).__name__} {self.phrase!r}")
        if not_utf8(self.phrase):
            raise InputError(f"box phrase: {not_utf8(self.phrase)}")
        if len(self.phrase) > MAX_PHRASE_CHARS:
            raise InputError(f"box phrase of {len(self.phrase)} characters; at most {MAX_PHRASE_CHARS} (the text "
                             "encoder reads its first tokens only)")
        if not all(is_real(c) for c in coords):
            raise InputError(f"box {self.spec()}: coordinates must be finite numbers")
        if not all(0.0 <= c <= 1.0 for c in coords):
            raise InputError(f"box {self.spec()}: coordinates must lie in [0, 1] (normalized x0,y0,x1,y1)")
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise InputError(f"box {self.spec()}: need x1 > x0 and y1 > y0")
        if not self.phrase.strip():
            raise InputError(f"box {self.spec()}: the phrase is empty")

    @classmethod
    def parse(cls, text: str) -> Box:
        """'x0,y0,x1,y1:phrase' -> Box (the CLI's --box syntax)."""
        coords, sep, phrase = text.partition(":")
        parts = coords.split(",")
        if not sep or len(parts) != 4:
            raise InputError(f"malformed box {text!r}: expected 'x0,y0,x1,y1:phrase', e.g. '0.1,0.2,0.5,0.9:a red cat'")
        try:
            x0, y0, x1, y1 = (float(p) for p in parts)
        except ValueError:
            raise InputError(f"malformed box {text!r}: coordinates must be numbers") from None
        return cls(x0, y0, x1, y1, phrase.strip())

    def spec(self) -> str:
        """The box in --box syntax; a coordinate that is not a number shows as its repr (error messages)."""
        coords = (self.x0, self.y0, self.x1, self.y1)
        return ",".join(f"{c:g}" if isinstance(c, int | float) and not isinstance(c, bool) else repr(c)
                        for c in coords) + f":{self.phrase}"


def box_arrays(boxes: tuple[Box, ...] | list[Box], slots: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates [1,slots,4] float32 and validity [1,slots] float32; slots beyond len(boxes) are padding."""
    slots = len(boxes) if slots is None else slots
    if len(boxes) > slots:
        raise InputError(f"{len(boxes)} boxes given, at most {slots} supported")
    coords = np.zeros((1, slots, 4), dtype=np.float32)
    valid = np.zeros((1, slots), dtype=np.float32)
    for i, b in enumerate(boxes):
        coords[0, i] = (b.x0, b.y0, b.x1, b.y1)
        valid[0, i] = 1.0
    return coords, valid
