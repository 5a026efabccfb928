"""Pipeline: the cascade from an artifacts directory, on any backend, without torch."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path

from dbunet.backends import AUTO, DEFAULT, REGISTRY, check_precision, choose_backend, make_backend, name_of
from dbunet.errors import ConfigError
from dbunet.generation import CascadePipeline
from dbunet.manifest import Manifest, PinnedDirectory, shown, verify_file
from dbunet.runtime.backends.base import Backend
from dbunet.runtime.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)


class Pipeline(CascadePipeline):
    made_backend: Backend | None = None  # the backend from_artifacts made from a name: closed with the pipeline

    def __init__(self, manifest: Manifest, directory: Path, backend: Backend, precision: str, stages) -> None:
        self.manifest, self.directory, self.backend, self.precision = manifest, directory, backend, precision
        self.config = manifest.config
        self.stages = stages

    @classmethod
    def from_artifacts(cls, directory: str | Path, backend: str | Backend = DEFAULT, precision: str | None = None,
                       device: str = "auto", threads: int | None = None,
                       whole_loops: bool | None = None) -> Pipeline:
        """Check the manifest, every file's hash and version, then load one graph per stage; all of it through
        one pinned directory, so what was verified is what is loaded even if an export switches it meanwhile.
        A backend named here is made with device, threads and whole_loops (dbunet.backends.make_backend) and
        closed with the pipeline; a backend object is the caller's, used as it is and left open (device, threads
        and whole_loops are its constructor's: given here with one, they are refused, not ignored)."""
        pinned = PinnedDirectory(directory)
        try:
            pipe = cls._load(pinned.path, backend, precision, device, threads, whole_loops)
        except BaseException:
            pinned.close()
            raise
        pipe.pinned, pipe.directory = pinned, Path(directory)  # engines load lazily (TensorRT): pinned meanwhile
        weakref.finalize(pipe, pinned.close)
        return pipe

    @classmethod
    def _load(cls, directory: Path, backend: str | Backend, precision: str | None, device: str,
              threads: int | None, whole_loops: bool | None) -> Pipeline:
        manifest = Manifest.read(directory)
        if backend == AUTO:
            backend, why = choose_backend(directory, precision, device, whole_loops)
            log.info("backend auto: %s (%s)", backend, why)
        name = backend if isinstance(backend, str) else name_of(backend)
        if name in REGISTRY:  # before the backend loads anything; a backend object of the caller's own judges itself
            check_precision(name, precision)
        if not isinstance(backend, str):
            check_own_settings(backend, device, threads, whole_loops)
            return cls._load_on(manifest, directory, backend, precision, name)
        made = make_backend(backend, device, threads, whole_loops)
        try:
            pipe = cls._load_on(manifest, directory, made, precision, name)
        except BaseException:
            try:
                made.close()
            except Exception:  # the load's error is the one to report: a close after it may fail of the same cause
                log.debug("closing the backend after a failed load failed too", exc_info=True)
            raise
        pipe.made_backend = made
        return pipe

    @classmethod
    def _load_on(cls, manifest: Manifest, directory: Path, be: Backend, precision: str | None, name: str) -> Pipeline:
        available = manifest.precisions()
        precision = precision or be.default_precision(available)
        files = be.artifact_precision(precision)  # OpenVINO computes BF16 from the FP32 files
        if files not in available:
            raise ConfigError(f"precision {files} was not exported to {shown(directory)}; "
                              f"available: {', '.join(sorted(available))}")
        manifest.check_runnable(files, shown(directory))  # every graph missing, named at once
        cfg = manifest.config
        tokenizers = [ClipTokenizer(verify_file(directory, tok["file"], tok["sha256"]), text.max_length,
                                    text.vocab_size, text.pad_token)
                      for tok, text in ((manifest.tokenizer, cfg.text), (manifest.tokenizer_2, cfg.text_2)) if tok]
        stages = be.stages(manifest, directory, files, tokenizers)
        log.info("loaded %s (%s, %s) on %s", shown(directory), manifest.config.name, precision, name)
        return cls(manifest, directory, be, precision, stages)

    def _release(self) -> None:
        self.stages.close()  # first: the stages' engines and buffers live on the backend's stream
        if self.made_backend is not None:
            self.made_backend.close()
        if getattr(self, "pinned", None) is not None:
            self.pinned.close()


def check_own_settings(backend: Backend, device: str, threads: int | None, whole_loops: bool | None) -> None:
    """A backend object was made with its own device, threads and whole_loops: any given beside it would be
    silently ignored, so they are refused."""
    given = [f"{name}={value!r}" for name, value, default in
             (("device", device, "auto"), ("threads", threads, None), ("whole_loops", whole_loops, None))
             if value != default]
    if given:
        raise ConfigError(f"{', '.join(given)}: a backend object ({type(backend).__name__}) was made with its own "
                          f"settings; pass them to its constructor, or name the backend instead")
