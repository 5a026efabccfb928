"""CLIP tokenization from tokenizer.json with the `tokenizers` library, padded as the model's tokenizer pads
(SD 1.x and SDXL's first tokenizer: with EOS; SD 2.x and SDXL's second: with "!")."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dbunet.errors import ArtifactError

EOS = "<|endoftext|>"
log = logging.getLogger(__name__)


class ClipTokenizer:
    def __init__(self, path: str | Path, max_length: int, vocab_size: int | None = None, pad_token: str = EOS) -> None:
        """`vocab_size`: the text encoder's embedding rows; a tokenizer that can emit larger ids is refused (ONNX
        Runtime crashes on such an id, OpenVINO reads past the table silently)."""
        from tokenizers import Tokenizer

        from dbunet.manifest import shown

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ArtifactError(f"{shown(path)}: cannot read tokenizer ({exc})") from None
        eos = self._tok.token_to_id(EOS)
        if eos is None:
            raise ArtifactError(f"{shown(path)}: no {EOS} token; not a CLIP tokenizer")
        ids = self._tok.get_vocab_size(with_added_tokens=True)
        if vocab_size is not None and ids > vocab_size:
            raise ArtifactError(f"{shown(path)} has {ids} token ids, the text encoder only {vocab_size}: they do not "
                                "belong together; re-run dbunet-export")
        self.max_length = max_length
        self._tok.enable_truncation(max_length)
        pad = self._tok.token_to_id(pad_token)
        if pad is None:
            raise ArtifactError(f"{shown(path)}: no {pad_token!r} token to pad with")
        self._tok.enable_padding(length=max_length, pad_id=pad, pad_token=pad_token)

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Token ids [len(texts), max_length] int64: BOS, tokens, EOS, EOS padding. Longer texts are cut to
        the text encoder's window (as SD 1.x does), with one warning."""
        encodings = self._tok.encode_batch(texts)
        cut = [t for t, e in zip(texts, encodings, strict=True) if e.overflowing]
        if cut:
            log.warning("%d text(s) longer than the text encoder's %d tokens were truncated (first: %.40r...)",
                        len(cut), self.max_length, cut[0])
        return np.array([e.ids for e in encodings], dtype=np.int64)
