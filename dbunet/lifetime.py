"""What every pipeline (the runtime's and the PyTorch reference) does about its end: `close()` frees what it holds,
once; a call after it is refused in one clear line instead of failing deep in a closed session; `with` closes it.
Torch-free."""

from __future__ import annotations

from dbunet.errors import ClosedError


class Closable:
    closed = False

    def _release(self) -> None:
        """Free sessions, engines, pinned directories (the subclass's own)."""

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._release()

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"this {type(self).__name__} was closed (close() freed what it held); open another "
                              "with dbunet.backends.open_pipeline()")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
