"""CLIP-format BPE tokenizer files (vocab.json + merges.txt), as Stable Diffusion 1.x ships them.

A real checkpoint folder brings its own; for presets without one we learn a small BPE
deterministically from a built-in word list, laid out like CLIP's: 256 byte symbols, the same
with the end-of-word suffix "</w>", the merges in order, then <|startoftext|> and <|endoftext|>
as the last two ids of the vocabulary. Torch-free.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from dbunet import atomic
from dbunet.errors import ConfigError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"

# Words of the kind prompts are made of; repeats weight the merge statistics.
_CORPUS = """
a an the of and with in on at by for from to under over near behind beside above below between
photo photograph picture painting drawing illustration render sketch portrait landscape closeup
cat cats dog dogs bird birds horse horses fish cow sheep lion tiger bear fox wolf rabbit mouse
man woman men women person people child children boy girl baby king queen knight robot astronaut
house houses castle tower bridge road street city town village building window door roof wall
tree trees flower flowers forest garden grass field mountain mountains hill river lake sea ocean
beach island desert snow rain cloud clouds sky sun moon star stars night day morning evening sunset
red green blue yellow orange purple pink brown black white gray golden silver bright dark colorful
big small large tiny tall short long old young new ancient modern beautiful cute happy sad
sitting standing running walking flying swimming sleeping eating reading holding wearing looking
table chair bed lamp car cars bus train boat ship plane bicycle ball book cup apple banana cake
hat shirt dress coat shoes glasses umbrella bag box boxes left right top bottom center middle
style detailed realistic cinematic lighting soft sharp high quality highly intricate studio
watercolor oil digital art artwork concept fantasy science fiction vintage retro minimalist
the the the a a a of of of and and with with in in on on photo photo of a cat a dog
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def learn_bpe(vocab_size: int, words: list[str] | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn merges until the vocabulary has `vocab_size` entries (or no pair is left).

    Deterministic: the most frequent pair wins, ties go to the lexicographically smallest pair.
    Special tokens take the last two ids, `vocab_size - 2` and `vocab_size - 1`, as in CLIP.
    """
    if vocab_size < 514 + 2:
        raise ConfigError(f"a CLIP BPE vocabulary needs at least 516 entries, got {vocab_size}")
    byte_chars = list(bytes_to_unicode().values())
    base = byte_chars + [c + END_OF_WORD for c in byte_chars]
    encoder = {tok: i for i, tok in enumerate(base)}
    to_unicode = bytes_to_unicode()

    def symbols(word: str) -> tuple[str, ...]:
        chars = [to_unicode[b] for b in word.encode("utf-8")]
        return (*chars[:-1], chars[-1] + END_OF_WORD)

    corpus = Counter(symbols(w.lower()) for w in (words or _CORPUS))
    merges: list[tuple[str, str]] = []
    budget = vocab_size - len(base) - 2
    while len(merges) < budget:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, freq in corpus.items():
            for pair in zip(word[:-1], word[1:], strict=True):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        encoder.setdefault(best[0] + best[1], len(encoder))
        corpus = Counter({_merge(word, best): freq for word, freq in corpus.items()})
    encoder[BOS] = vocab_size - 2
    encoder[EOS] = vocab_size - 1
    return encoder, merges


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def write_clip_tokenizer(directory: str | Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> Path:
    """Write vocab.json and merges.txt (with CLIP's version header) atomically."""
    directory = Path(directory)
    atomic.write_text(directory / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic.write_text(directory / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return directory
