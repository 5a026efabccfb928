"""What every pipeline (the runtime's and the PyTorch reference) does about its end: `close()` frees what it holds,
once; a call after it is refused in one clear line instead of failing deep in a closed session; `with` closes it.

A pipeline may be shared by threads, so close() may come while calls are running: it refuses new calls at once,
and what the pipeline holds is freed when the last running call ends (never under it). close() does not wait, so
it may also come from inside a call (a progress callback). Torch-free."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from dbunet.errors import ClosedError

_STATE = threading.Lock()  # guards every pipeline's `closed` and `_calls`: held for a few instructions only


class Closable:
    closed = False
    _calls = 0  # calls running now
    _released = False

    def _release(self) -> None:
        """Free sessions, engines, pinned directories (the subclass's own)."""

    def close(self) -> None:
        with _STATE:
            self.closed = True
            release = self._calls == 0 and not self._released
            self._released = self._released or release
        if release:
            self._release()

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"this {type(self).__name__} was closed (close() freed what it held); open another "
                              "with dbunet.backends.open_pipeline()")

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """One call: refused once closed; while it runs, what it uses stays (a close() meanwhile leaves the freeing
        to the last running call's end)."""
        with _STATE:
            self.check_open()
            self._calls += 1
        try:
            yield
        finally:
            with _STATE:
                self._calls -= 1
                release = self.closed and self._calls == 0 and not self._released
                self._released = self._released or release
            if release:
                self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
