"""What every command shares: one-line errors with exit status 2, progress on stderr."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from dbunet.errors import DbunetError, InputError

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one `error:` line (no usage block), exit status 2."""

    _argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)  # for error()'s hint
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        print(f"error: {message}{self._dash_value_hint(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)

    def _dash_value_hint(self, message: str) -> str:
        """argparse reads a value that starts with '-' and is not a plain number (`--box -0.1,0,1,1:cat`,
        `--scale-delays -1:2`) as an option and says only "expected one argument": name the form it takes."""
        match = re.match(r"argument (\S+): expected one argument", message)
        if not match:
            return ""
        flags = match.group(1).split("/")
        for flag, value in zip(self._argv, self._argv[1:], strict=False):
            if flag in flags and value[:1] == "-" and value[:2] != "--" and value not in self._option_string_actions:
                return f"; a value that starts with '-' goes after '=': {flag}={value}"
        return ""


def path_arg(text: str) -> Path:
    """argparse `type` for a path: an empty string (an unset shell variable, `--out ""`) is refused instead of
    becoming Path("."), the current directory."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def add_precision(group) -> None:
    """--precision, for every command that opens a pipeline: its choices and help from the backend registry."""
    from dbunet import backends

    group.add_argument("--precision", choices=backends.PRECISIONS, help=backends.describe_precisions())


def add_whole_loops(group) -> None:
    """--whole-loops / --no-whole-loops, for every command that opens a pipeline (default None: the backend's)."""
    group.add_argument("--whole-loops", action=argparse.BooleanOptionalAction, default=None,
                       help="run each denoising loop in one call with its tensors on the device (ort; trt always "
                            "does, openvino never). Default: on with ONNX Runtime's CUDA provider, off on the CPU, "
                            "where it gains on small models only (shapes 0.79-0.87x per image, sd15 none; "
                            "benchmarks/README.md) and the first image of each size builds a session for it. A run's "
                            "progress bar then moves once per loop")


def check_output(path: Path, flag: str = "--output", suffix: str | None = None, artifacts: Path | None = None) -> None:
    """Refuse, before any work, an output file that could not be written (or is not named `suffix`, a format
    the file will be written in whatever its name says), or that lies in the artifacts directory being read."""
    if suffix is not None and path.suffix.lower() != suffix:
        raise InputError(f"{flag} must be a {suffix} file, got {path}")
    if artifacts is not None and path.resolve().is_relative_to(Path(artifacts).resolve()):
        # it could overwrite the manifest or a graph, and the next export replaces the directory whole
        raise InputError(f"{flag} {path} is inside the artifacts directory {artifacts}, whose files it could "
                         "overwrite and which the next export replaces whole; write it elsewhere")
    if len(os.fsencode(path.name)) > 255:
        raise InputError(f"{flag} {path}: the file name is longer than the 255 bytes a file system allows")
    if path.is_dir():
        raise InputError(f"{flag} {path} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{flag} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: the folder {parent} is not writable")
    if path.exists() and parent.stat().st_mode & stat.S_ISVTX and os.geteuid() not in (0, path.stat().st_uid):
        raise InputError(f"{flag} {path} belongs to another user in a sticky folder (like /tmp): it cannot be "
                         "replaced; choose another name")


def terminate_like_interrupt() -> None:
    """SIGTERM (a service manager, `kill`) unwinds like Ctrl-C: temporary files and half exports are removed by
    the code that made them, instead of being left behind by an abrupt exit."""
    import signal
    import threading

    def stop(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def guarded(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """A user's mistake prints one line and exits 2; anything else is our bug and keeps its traceback. Warnings
    (what was assumed, dropped or not used) reach stderr naming their level and module, in every command alike."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        terminate_like_interrupt()
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            return main(argv)
        except DbunetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        except OSError as exc:  # the machine said no (disk full, read-only, permissions): which file, and why
            where = exc.filename or ""
            print(f"error: {where + ': ' if where else ''}{exc.strerror or exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("error: interrupted; nothing half-written was kept", file=sys.stderr)
            return 130

    return wrapper


class ProgressBar:
    """A tqdm bar per stage on a terminal; silent when stderr is a file or a pipe (logs stay clean)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self._stage: str | None = None
        self._bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            # disable=None: tqdm turns itself off when the stream is not a terminal
            self._bar = tqdm(total=total, desc=f"{stage:<8}", file=self.stream, disable=None, leave=True,
                             bar_format="{desc} {bar:30} {n_fmt}/{total_fmt} {elapsed}")
        self._bar.update(done - self._bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar, self._stage = None, None


def print_timings(timings: dict[str, float], step_times: list[float], stream=None) -> None:
    stream = stream or sys.stderr
    rows = [("text encoder", timings.get("text", 0.0))]
    if step_times:
        per = sorted(step_times)[len(step_times) // 2]
        label = f"denoise ({len(step_times)} steps, {per * 1000:.1f} ms/step median)"
        rows.append((label, timings.get("denoise", 0.0)))
    rows += [("VAE decode", timings.get("vae", 0.0)), ("refiner", timings.get("refiner", 0.0)),
             ("total", timings.get("total", 0.0))]
    width = max(len(r[0]) for r in rows)
    stream.write(f"{'stage':<{width}}  seconds\n")
    for name, secs in rows:
        stream.write(f"{name:<{width}}  {secs:7.3f}\n")
    stream.flush()
