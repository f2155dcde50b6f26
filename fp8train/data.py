"""Corpora to token streams to fixed-length training sequences, deterministic and resumable.

A corpus (a local text file read through HF `datasets`, a hub dataset, or nothing for
synthetic data) is tokenized once into a cache directory (train.bin, val.bin, meta.json).
Sequences are addressed by a global sample index: index i is the same tokens whatever the
world size, so a step's global batch is samples [position, position + batch_size) split
across ranks, and resuming needs only `position`.
"""
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fp8train import tokenizer as tokenizers

DOWNLOAD_TIMEOUT_S = 30
# Public corpora fetched when a `text` source names them (a bare file name under data_dir) and the file is absent.
# Keyed by name, not a preset's data.url, so that data.path=<a typo> fails instead of receiving Shakespeare.
PUBLIC_CORPORA = {
    "tinyshakespeare.txt": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
}


class CorpusNotFound(FileNotFoundError):
    """The corpus file is absent and could not be downloaded; the message says how to point at a copy."""


def text_path(cfg) -> Path:
    """The corpus file of a `text` source, downloaded when absent from data.url, or from PUBLIC_CORPORA when
    data.path is one of its names."""
    path = Path(cfg.path) if Path(cfg.path).is_absolute() else Path(cfg.data_dir) / cfg.path
    if path.exists():
        return path
    hint = f"put a copy at {path}, or point FP8TRAIN_DATA_DIR / data.data_dir at its directory, or set data.path"
    url = cfg.url or PUBLIC_CORPORA.get(cfg.path)
    if not url:
        raise CorpusNotFound(f"{path} not found; {hint}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            body = response.read()
    except OSError as e:
        raise CorpusNotFound(f"{path} not found and downloading {url} failed ({e}); {hint}") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(body)
    os.replace(tmp, path)
    return path


def _take_documents(docs, text_field: str, max_chars: int | None) -> list[str]:
    """Texts of `docs` until `max_chars` characters (every token is at least one character)."""
    texts, total = [], 0
    for doc in docs:
        texts.append(doc[text_field])
        total += len(texts[-1])
        if max_chars is not None and total >= max_chars:
            break
    return texts


def _read_documents(cfg) -> list[str]:
    import datasets  # heavy: only on a cache miss

    if cfg.source == "text":
        ds = datasets.load_dataset("text", data_files=str(text_path(cfg)), sample_by="document", split="train",
                                   cache_dir=str(Path(cfg.cache_dir) / "hf"))
        return list(ds["text"])
    ds = datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=cfg.hub_split, streaming=cfg.streaming,
                               cache_dir=str(Path(cfg.cache_dir) / "hf"))
    return _take_documents(ds, cfg.text_field, cfg.max_tokens)


def cache_key(cfg) -> str:
    """Directory name of a tokenized corpus: changes when its source, tokenizer or split change."""
    if cfg.source == "text":
        path = text_path(cfg)
        stat = path.stat()
        ident = {"file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        stem = path.stem
    else:
        ident = {k: cfg[k] for k in ("hub_name", "hub_config", "hub_split", "text_field", "streaming")}
        stem = cfg.hub_name.replace("/", "_")
    ident.update(tokenizer=cfg.tokenizer, val_fraction=cfg.val_fraction, max_tokens=cfg.max_tokens)
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return f"{stem}-{cfg.tokenizer}-{digest}"


def prepare(cfg) -> Path:
    """Tokenize the corpus into the cache (once) and return its directory."""
    out = Path(cfg.cache_dir) / cache_key(cfg)
    if (out / "meta.json").exists():
        return out
    texts = _read_documents(cfg)
    tok = tokenizers.fit(cfg.tokenizer, texts)
    ids = tok.encode_documents(texts)[: cfg.max_tokens]
    n_train = int(len(ids) * (1 - cfg.val_fraction))  # nanoGPT's split: train is the first 90%
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    ids[:n_train].astype(dtype).tofile(tmp / "train.bin")
    ids[n_train:].astype(dtype).tofile(tmp / "val.bin")
    meta = {"tokenizer": tok.state(), "vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name,
            "train_tokens": n_train, "val_tokens": len(ids) - n_train}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.rename(tmp, out)  # atomic; another rank or process may have won the race
    except OSError:
        shutil.rmtree(tmp)
    return out


class PackedSequences:
    """Windows of seq_len + 1 tokens (inputs and shifted targets) cut from one token stream.

    With shuffle, each epoch shifts the window boundaries by a seeded offset below seq_len and
    visits the windows in a seeded order: every token is seen once per epoch, at varying context
    positions. Without shuffle, windows are consecutive from the start (validation).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, shuffle: bool):
        self.tokens, self.seq_len, self.seed, self.shuffle = tokens, seq_len, seed, shuffle
        # room for a shift of up to seq_len - 1 tokens when shuffling
        self.per_epoch = (len(tokens) - 1 - (seq_len - 1 if shuffle else 0)) // seq_len
        if self.per_epoch < 1:
            raise ValueError(f"{len(tokens)} tokens are too few for sequences of {seq_len}")
        self._epoch, self._offset, self._order = None, 0, None

    def __len__(self) -> int:
        return self.per_epoch

    def _start(self, i: int) -> int:
        epoch, j = divmod(i, self.per_epoch)
        if not self.shuffle:
            return j * self.seq_len
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._offset = epoch, int(rng.integers(self.seq_len))
            self._order = rng.permutation(self.per_epoch)
        return self._offset + int(self._order[j]) * self.seq_len

    def __getitem__(self, i: int) -> np.ndarray:
        start = self._start(i)
        return self.tokens[start: start + self.seq_len + 1]


class SyntheticSequences:
    """Uniform random tokens, a function of (seed, index) alone: throughput runs need no corpus."""

    def __init__(self, vocab_size: int, seq_len: int, seed: int):
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed

    def __len__(self) -> int:
        return 1 << 20  # validation batches drawn from the same distribution

    def __getitem__(self, i: int) -> np.ndarray:
        return np.random.default_rng([self.seed, i]).integers(self.vocab_size, size=self.seq_len + 1)


@dataclass
class Splits:
    train: object  # PackedSequences or SyntheticSequences
    val: object
    vocab_size: int
    tokenizer_state: dict | None


def load(cfg, seed: int) -> Splits:
    """Train and validation sequences for a data config (tokenizing into the cache on first use)."""
    if cfg.source == "synthetic":
        return Splits(SyntheticSequences(cfg.vocab_size, cfg.seq_len, seed),
                      SyntheticSequences(cfg.vocab_size, cfg.seq_len, seed + 1), cfg.vocab_size, None)
    cache = prepare(cfg)
    meta = json.loads((cache / "meta.json").read_text())
    train, val = (np.memmap(cache / f"{s}.bin", dtype=meta["dtype"], mode="r") for s in ("train", "val"))
    return Splits(PackedSequences(train, cfg.seq_len, seed, shuffle=True),
                  PackedSequences(val, cfg.seq_len, seed, shuffle=False), meta["vocab_size"], meta["tokenizer"])


def rank_slice(position: int, batch_size: int, rank: int, world_size: int) -> range:
    """This rank's sample indices of the global batch that starts at sample `position`."""
    per_rank = batch_size // world_size
    start = position + rank * per_rank
    return range(start, start + per_rank)


def to_batch(seqs, indices, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (len(indices), seq_len) int64, on `device`."""
    rows = torch.from_numpy(np.stack([seqs[i] for i in indices]).astype(np.int64))
    if device.type == "cuda":
        rows = rows.pin_memory().to(device, non_blocking=True)
    else:
        rows = rows.to(device)
    return rows[:, :-1], rows[:, 1:]
