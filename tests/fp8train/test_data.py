"""Corpus caching, packing, determinism from the seed, resumable positions and per-rank sharding."""
import numpy as np
import pytest
from omegaconf import OmegaConf

from fp8train import data
from fp8train.config import DataConfig


def text_cfg(tmp_path, **kw):
    return OmegaConf.structured(DataConfig(**{"data_dir": str(tmp_path), "path": "corpus.txt",
                                              "cache_dir": str(tmp_path / "cache"), "seq_len": 8, **kw}))


def test_shakespeare_char_split_matches_nanogpt(make_cfg):
    cfg = make_cfg().data
    splits = data.load(cfg, seed=0)
    # nanoGPT's data/shakespeare_char/prepare.py: 65 characters, 1,003,854 train and 111,540 val tokens.
    assert splits.vocab_size == 65
    assert len(splits.train.tokens) == 1003854 and len(splits.val.tokens) == 111540


def test_cache_is_built_once_and_keyed_by_content(tmp_path):
    (tmp_path / "corpus.txt").write_text("hello world, " * 50)
    cfg = text_cfg(tmp_path)
    first = data.prepare(cfg)
    stamp = (first / "train.bin").stat().st_mtime_ns
    assert data.prepare(cfg) == first and (first / "train.bin").stat().st_mtime_ns == stamp
    (tmp_path / "corpus.txt").write_text("goodbye world, " * 50)
    assert data.prepare(cfg) != first
    assert data.prepare(text_cfg(tmp_path, tokenizer="byte")) != data.prepare(cfg)


def test_missing_corpus_offline_says_how_to_point_at_a_copy(tmp_path, monkeypatch):
    # A known corpus's public address (a closed local port here: no network in tests).
    monkeypatch.setitem(data.PUBLIC_CORPORA, "tinyshakespeare.txt", "http://127.0.0.1:9/input.txt")
    for cfg in (text_cfg(tmp_path, path="tinyshakespeare.txt"),
                text_cfg(tmp_path, path="mine.txt", url="http://127.0.0.1:9/input.txt")):
        with pytest.raises(data.CorpusNotFound) as e:
            data.prepare(cfg)
        message = str(e.value)
        assert "downloading http://127.0.0.1:9/input.txt failed" in message
        assert "FP8TRAIN_DATA_DIR" in message and "\n" not in message


def test_a_mistyped_corpus_path_is_not_filled_by_a_download(make_cfg, tmp_path):
    """The Shakespeare preset with data.path overridden: nothing is fetched into the user's path (it used to
    inherit the preset's URL and would have written Shakespeare there when online)."""
    cfg = make_cfg(f"data.path={tmp_path / 'typo.txt'}").data
    with pytest.raises(data.CorpusNotFound, match="typo.txt not found; put a copy"):
        data.prepare(cfg)
    assert not (tmp_path / "typo.txt").exists()


def test_packed_windows_are_deterministic_disjoint_and_shifted():
    tokens = np.arange(1000)
    a, b = (data.PackedSequences(tokens, 10, seed=3, shuffle=True) for _ in range(2))
    n = len(a)
    epoch0 = [a[i] for i in range(n)]
    assert all(np.array_equal(epoch0[i], b[i]) for i in range(n))  # same seed, same data
    starts = sorted(int(w[0]) for w in epoch0)
    assert all(len(w) == 11 and np.array_equal(w, np.arange(w[0], w[0] + 11)) for w in epoch0)
    assert all(s2 - s1 == 10 for s1, s2 in zip(starts, starts[1:]))  # windows tile the stream once
    order = [int(w[0]) for w in epoch0]
    assert order != sorted(order)  # shuffled
    # The next epoch shifts boundaries and reshuffles; another seed gives other data.
    assert [int(a[n + i][0]) for i in range(n)] != order
    other = data.PackedSequences(tokens, 10, seed=4, shuffle=True)
    assert [int(other[i][0]) for i in range(n)] != order
    # Random access by index is what makes a position resumable: out-of-order reads agree.
    fresh = data.PackedSequences(tokens, 10, seed=3, shuffle=True)
    assert np.array_equal(fresh[2 * n + 5], a[2 * n + 5]) and np.array_equal(fresh[7], epoch0[7])


def test_validation_windows_are_consecutive():
    val = data.PackedSequences(np.arange(100), 10, seed=0, shuffle=False)
    assert len(val) == 9 and [int(val[i][0]) for i in range(3)] == [0, 10, 20]


def test_synthetic_is_a_function_of_seed_and_index():
    s = data.SyntheticSequences(vocab_size=100, seq_len=16, seed=1)
    assert np.array_equal(s[5], data.SyntheticSequences(100, 16, 1)[5])
    assert not np.array_equal(s[5], s[6]) and len(s[5]) == 17 and s[5].max() < 100


@pytest.mark.parametrize("world", [2, 4])
def test_rank_slices_rebuild_the_global_batch(world):
    position, batch = 96, 16
    whole = list(data.rank_slice(position, batch, 0, 1))
    assert whole == list(range(96, 112))
    assert sum((list(data.rank_slice(position, batch, r, world)) for r in range(world)), []) == whole


def test_to_batch_shifts_targets():
    seqs = data.PackedSequences(np.arange(100), 8, seed=0, shuffle=False)
    x, y = data.to_batch(seqs, [0, 2], data.torch.device("cpu"))
    assert x.shape == (2, 8) and x.dtype == data.torch.int64
    assert x[1].tolist() == list(range(16, 24)) and y[1].tolist() == list(range(17, 25))


def test_take_documents_stops_at_budget():
    docs = ({"text": "x" * 10} for _ in range(100))
    assert len(data._take_documents(docs, "text", 25)) == 3
