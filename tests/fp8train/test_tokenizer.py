"""Tokenizers round-trip text and keep their state through a checkpoint-style dict."""
import sys

import numpy as np
import pytest

from fp8train import tokenizer
from fp8train.errors import ConfigError

TEXTS = ["First Citizen:\nBefore we proceed any further, hear me speak.", "Zwölf Boxkämpfer — 12 €!"]


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_round_trip(kind):
    tok = tokenizer.fit(kind, TEXTS)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids.dtype == np.int64 and ids.max() < tok.vocab_size
        assert tok.decode(ids) == text
    again = tokenizer.from_state(tok.state())
    assert again.vocab_size == tok.vocab_size
    assert np.array_equal(again.encode(TEXTS[1]), tok.encode(TEXTS[1]))


def test_char_vocabulary_is_sorted_characters():
    tok = tokenizer.fit("char", ["cab", "ba"])
    assert tok.chars == "\nabc"  # the document separator's newline included
    assert tok.encode("abc").tolist() == [1, 2, 3]
    assert tok.encode_documents(["a", "b"]).tolist() == [1, 0, 0, 2]
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("az")


def test_byte_tokenizer_counts_utf8_bytes():
    tok = tokenizer.fit("byte", [])
    assert tok.vocab_size == 256 and len(tok.encode("€")) == 3


def test_gpt2_round_trip():
    try:
        tok = tokenizer.fit("gpt2", [])
    except ConfigError as e:  # tiktoken's BPE files neither cached nor downloadable here
        pytest.skip(str(e))
    ids = tok.encode_documents(TEXTS)
    assert tok.vocab_size == 50257 and ids[-1] == 50256  # end-of-text closes each document
    assert tok.decode(tok.encode(TEXTS[0])) == TEXTS[0]


def test_gpt2_without_tiktoken_is_a_config_error(monkeypatch):
    """One line naming the key (fp8train-train prints it as `config error: ...`), not a traceback mid-run."""
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # as if the `bpe` extra were not installed
    with pytest.raises(ConfigError, match="^data.tokenizer: gpt2 needs tiktoken"):
        tokenizer.fit("gpt2", [])
