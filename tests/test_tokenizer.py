import json

import numpy as np
import tokenizers

from dbunet.models.components import load_tokenizer, tokenize
from dbunet.tokenizer import BOS, EOS, learn_bpe, write_clip_tokenizer


def test_learned_bpe_is_deterministic_and_clip_shaped():
    vocab, merges = learn_bpe(1024)
    assert (vocab, merges) == learn_bpe(1024)
    assert len(vocab) == 1024 and vocab[BOS] == 1022 and vocab[EOS] == 1023
    assert vocab["a"] == vocab["!"] + (ord("a") - ord("!")) and "a</w>" in vocab  # byte symbols then suffixed ones
    assert len(set(vocab.values())) == len(vocab)


def test_tokenizes_like_sd(tmp_path):
    vocab, merges = learn_bpe(1024)
    write_clip_tokenizer(tmp_path, vocab, merges)
    assert (tmp_path / "merges.txt").read_text().startswith("#version: 0.2\n")
    tok = load_tokenizer(tmp_path)
    ids = tokenize(tok, ["a photo of a cat", "A PHOTO  of a cat", ""], 77)
    assert ids.shape == (3, 77) and ids.dtype == np.int64
    assert ids[0, 0] == 1022 and (ids[0] == 1023).sum() == 77 - int((ids[0] != 1023).sum())
    first_eos = int(np.argmax(ids[0] == 1023))
    assert first_eos > 1 and (ids[0, first_eos:] == 1023).all()  # EOS then EOS padding
    assert np.array_equal(ids[0], ids[1])  # lower-cased, whitespace-normalised
    assert list(ids[2, :2]) == [1022, 1023]
    long = tokenize(tok, ["cat " * 200], 77)[0]
    assert long[-1] == 1023 and long[0] == 1022  # truncated, still ends with EOS

    # the tokenizers library (the torch-free runtime's) reads the same files to the same ids
    save_dir = tmp_path / "fast"
    tok.save_pretrained(str(save_dir))
    fast = tokenizers.Tokenizer.from_file(str(save_dir / "tokenizer.json"))
    assert fast.encode("a photo of a cat").ids == list(ids[0])
    json.loads((save_dir / "tokenizer.json").read_text())
