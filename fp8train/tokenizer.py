"""Tokenizers: character-level (vocabulary from the corpus), byte-level, and GPT-2 BPE (tiktoken).

Each encodes a list of documents into one flat numpy id stream and saves its state as a
small dict, so a checkpoint can decode what its model emits.
"""
import numpy as np

from fp8train.errors import ConfigError

DOC_SEPARATOR = "\n\n"  # between documents for char and byte tokenizers (GPT-2 uses its end-of-text token)


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)  # sorted: chars come sorted

    @classmethod
    def fit(cls, texts: list[str]) -> "CharTokenizer":
        return cls("".join(sorted(set().union(*map(set, texts + [DOC_SEPARATOR])))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codepoints, cps)
        unknown = (ids >= len(self._codepoints)) | (self._codepoints[np.minimum(ids, len(self._codepoints) - 1)] != cps)
        if unknown.any():
            raise ValueError(f"character {chr(cps[unknown.argmax()])!r} is not in the vocabulary")
        return ids.astype(np.int64)

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return self.encode(DOC_SEPARATOR.join(texts))

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def state(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class ByteTokenizer:
    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return self.encode(DOC_SEPARATOR.join(texts))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def state(self) -> dict:
        return {"kind": self.kind}


class GPT2Tokenizer:
    kind = "gpt2"

    def __init__(self):
        try:
            import tiktoken

            self._enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # tiktoken missing, or its BPE files neither cached nor downloadable
            raise ConfigError(
                "data.tokenizer", f"gpt2 needs tiktoken and its BPE files ({e}); install the 'bpe' extra and, "
                "offline, point TIKTOKEN_CACHE_DIR at a cache that holds them"
            ) from None

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    def encode(self, text: str) -> np.ndarray:
        return np.array(self._enc.encode_ordinary(text), dtype=np.int64)

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        eot = self._enc.eot_token
        ids = [tok + [eot] for tok in self._enc.encode_ordinary_batch(texts)]
        return np.fromiter((i for doc in ids for i in doc), dtype=np.int64)

    def decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids])

    def state(self) -> dict:
        return {"kind": self.kind}


def fit(kind: str, texts: list[str]):
    """A tokenizer of `kind` ready for `texts` (only the char tokenizer learns from them)."""
    if kind == "char":
        return CharTokenizer.fit(texts)
    return from_state({"kind": kind})


def from_state(state: dict):
    kind = state["kind"]
    if kind == "char":
        return CharTokenizer(state["chars"])
    if kind == "byte":
        return ByteTokenizer()
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise ValueError(f"unknown tokenizer {kind!r}")
