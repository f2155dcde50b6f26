"""Shared runner of the paper's throughput figures: the problem grid, timing, and one row per measurement.

Timing is `triton.testing.do_bench`'s median after its warm-up, on CUDA only,
taken in `rounds` interleaved rounds per problem (every candidate once a
round, in orders balanced over rounds: experiments.rounds) and reported as
the median round: drift of the clock or the host over a table, and the place
in a round, then fall on every candidate alike instead of on whichever ran
at that time or place.
Backward time is the backward pass alone: one forward builds the graph, then
`out.backward(dout, retain_graph=True)` is timed (gradients reset between
repetitions), so no forward time is subtracted. TFLOPs/s use the paper's counts
(kernels.flops: backward = 2.5x forward, causal = half).

On CPU (`--quick`, CI) the same pipeline runs on tiny shapes through the
reference/interpreter paths with a wall-clock timer: the numbers only prove
that every step runs.
"""
import functools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments import provenance, writers
from experiments.paper import outputs
from experiments.paper.candidates import Unavailable, environment
from experiments.paper.paper_figures import PAPER_SEQLENS, paper_series
from experiments.rounds import round_order
from kernels.flops import attention_flops, tflops_per_s
from kernels.reference import attention_ref, attention_ref_grads

CPU_TIMING_NOTE = "CPU wall-clock median on tiny shapes: meaningless as speed, proves the pipeline only"

# Paper grid: batch * seqlen = 16k tokens, heads * headdim = 2048.
TOKENS, HIDDEN = 16384, 2048
HEADDIMS = (64, 128, 256)
CAUSALS = (False, True)
# Quick grid: small enough for the Triton interpreter on one CPU core.
QUICK_TOKENS, QUICK_HIDDEN, QUICK_HEADDIMS, QUICK_SEQLENS = 64, 64, (64,), (32, 64)
CPU_REPEATS = 3

ROW_COLUMNS = ("figure", "mode", "dtype", "batch", "seqlen", "nheads", "headdim", "causal", "impl", "kind",
               "backend", "status", "reason", "ms", "tflops", "max_abs_err", "best_peer", "vs_best_peer")


@dataclass(frozen=True)
class Problem:
    batch: int
    seqlen: int
    nheads: int
    headdim: int
    causal: bool

    def flops(self, mode):
        return attention_flops(self.batch, self.seqlen, self.nheads, self.headdim, self.causal, mode)


@dataclass
class Options:
    """What the CLI passes to every table; `command` goes into the provenance."""
    out: Path
    quick: bool = False
    wandb: bool = False
    impls: frozenset = None          # restrict to these candidate names (None: all)
    headdims: tuple = None           # override the figure's head dims
    seqlens: tuple = None            # override the figure's sequence lengths
    warmup_ms: int = 25
    rep_ms: int = 100
    rounds: int = 3                  # interleaved timing rounds per problem on a GPU (the CPU path times one)
    command: str = ""
    explicit: bool = True            # this table was named on the command line (not via `all`)

    @functools.cached_property
    def provenance(self):
        return provenance.collect(self.command)

    def device(self):
        if torch.cuda.is_available():
            return "cuda"
        if not self.quick:
            raise SystemExit("full-size paper figures need a CUDA GPU; use --quick on CPU")
        return "cpu"

    def timing_rounds(self):
        return self.rounds if self.device() == "cuda" else 1

    def timing_note(self):
        if self.device() == "cpu":
            return CPU_TIMING_NOTE
        return (f"median of {self.timing_rounds()} interleaved rounds (orders balanced over rounds, a Williams "
                "design) of triton.testing.do_bench's median after warm-up (CUDA); backward timed alone with "
                "retain_graph=True; TFLOPs/s by the paper's FLOP counts")

    def pick(self, roster):
        return [c for c in roster if self.impls is None or c.name in self.impls]


def grid(opts):
    """Problems of a figure: batch * seqlen and heads * headdim fixed as in the paper (tiny in quick mode)."""
    tokens, hidden = (QUICK_TOKENS, QUICK_HIDDEN) if opts.quick else (TOKENS, HIDDEN)
    headdims = opts.headdims or (QUICK_HEADDIMS if opts.quick else HEADDIMS)
    seqlens = opts.seqlens or (QUICK_SEQLENS if opts.quick else PAPER_SEQLENS)
    return [Problem(max(1, tokens // s), s, max(1, hidden // d), d, c)
            for c in CAUSALS for d in headdims for s in seqlens]


def time_ms(fn, opts, grad_to_none=None):
    if torch.cuda.is_available():
        from triton.testing import do_bench
        return do_bench(fn, warmup=opts.warmup_ms, rep=opts.rep_ms, grad_to_none=grad_to_none,
                        return_mode="median")
    fn()
    samples = []
    for _ in range(CPU_REPEATS):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _inputs(problem, dtype, device, mode):
    """q, k, v (leaves that take gradients for "bwd") and, for "bwd", the output gradient every candidate gets."""
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (problem.batch, problem.seqlen, problem.nheads, problem.headdim)
    qkv = [torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_(mode == "bwd")
           for _ in range(3)]
    dout = torch.randn(shape, generator=gen, device=device, dtype=dtype) if mode == "bwd" else None
    return qkv, dout


def _head0(t):
    return t.detach()[:1, :, :1]


def _reference(q, k, v, dout, causal):
    """The float32 oracle on batch 0 / head 0 (a full one at 16k would not fit): the output for "fwd", or
    (dq, dk, dv) for "bwd" (heads and batches do not mix, so one head's gradients need only its inputs)."""
    if dout is None:
        return [attention_ref(_head0(q), _head0(k), _head0(v), causal=causal, dtype=torch.float32)[0]]
    return list(attention_ref_grads(_head0(q), _head0(k), _head0(v), _head0(dout), causal, dtype=torch.float32)[2:])


def _failure(candidate, err):
    """(status, reason) for an exception: peers and unsupported inputs are skipped, our crashes are errors."""
    first_line = (str(err).strip().splitlines() or [""])[0]
    reason = f"{type(err).__name__}: {first_line}"[:200]
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return "oom", "out of memory"
    if isinstance(err, Unavailable):
        return "skipped", str(err)
    if candidate.kind == "peer" or isinstance(err, (ValueError, NotImplementedError)):
        return "skipped", reason
    return "error", reason


def _time_candidate(cand, problem, q, k, v, dout, ref, mode, opts):
    """{backend, max_abs_err, ms} of one candidate, one round; its graph and outputs die with this frame.
    The error is the output's for "fwd", the largest of dq's, dk's and dv's for "bwd"."""
    with environment(dict(cand.env)):
        call = cand.build(problem, q, k, v)
        backend = cand.backend(q, k, mode) if cand.backend else ""
        out = call()  # the first call compiles and rejects unsupported shapes before any timing
        if mode == "fwd":
            got = [out]
        else:
            for t in (q, k, v):
                t.grad = None
            out.backward(dout, retain_graph=True)
            got = [q.grad, k.grad, v.grad]
        err = max((_head0(g).float() - r).abs().max().item() for g, r in zip(got, ref))
        if mode == "fwd":
            ms = time_ms(call, opts)
        else:
            ms = time_ms(lambda: out.backward(dout, retain_graph=True), opts, grad_to_none=[q, k, v])
    return dict(backend=backend, max_abs_err=err, ms=ms)


def measure(problem, candidates, mode, dtype, opts, figure):
    """One row per candidate for one problem: time (median of the rounds), TFLOPs/s, error against a float32
    reference. A candidate that fails in a round is not timed again."""
    device = opts.device()
    (q, k, v), dout = _inputs(problem, dtype, device, mode)
    ref = _reference(q, k, v, dout, problem.causal)
    rows = {cand.name: dict(figure=figure, mode=mode, dtype=str(dtype).removeprefix("torch."), batch=problem.batch,
                            seqlen=problem.seqlen, nheads=problem.nheads, headdim=problem.headdim,
                            causal=problem.causal, impl=cand.name, kind=cand.kind, status="ok")
            for cand in candidates}
    times = {cand.name: [] for cand in candidates}
    for r in range(opts.timing_rounds()):
        for cand in (candidates[i] for i in round_order(len(candidates), r)):
            row = rows[cand.name]
            if row["status"] != "ok":
                continue
            try:
                timed = _time_candidate(cand, problem, q, k, v, dout, ref, mode, opts)
                times[cand.name].append(timed.pop("ms"))
                row.update(timed)
            except Exception as err:  # noqa: BLE001 -- one failing implementation must not stop the table
                row["status"], row["reason"] = _failure(cand, err)
            if device == "cuda":
                torch.cuda.empty_cache()
    for row in rows.values():
        if row["status"] == "ok":
            row["ms"] = statistics.median(times[row["impl"]])
            row["tflops"] = tflops_per_s(problem.flops(mode), row["ms"])
        speed = f"{row['tflops']:.1f} TFLOPs/s" if "tflops" in row else row.get("reason", "")
        print(f"[{figure}] {problem} {row['impl']}: {row['status']} {speed}", flush=True)
    rows = list(rows.values())
    _add_peer_ratios(rows)
    return rows


def _add_peer_ratios(rows):
    peers = [r for r in rows if r["kind"] == "peer" and r["status"] == "ok"]
    if not peers:
        return
    best = max(peers, key=lambda r: r["tflops"])
    for r in rows:
        if r["kind"] == "ours" and r["status"] == "ok":
            r["best_peer"], r["vs_best_peer"] = best["impl"], r["tflops"] / best["tflops"]


def paper_rows(figure, paper_figure, mode, problems):
    """The paper's H100 bars for the panels and sequence lengths we measured, as rows of kind "paper"."""
    rows = []
    for hd, causal in sorted({(p.headdim, p.causal) for p in problems}):
        for series, by_seqlen in paper_series(paper_figure, hd, causal).items():
            for p in problems:
                value = by_seqlen.get(p.seqlen)
                if p.headdim == hd and p.causal == causal and value is not None:
                    rows.append(dict(figure=figure, mode=mode, dtype="fp16/bf16 or fp8 (paper)", batch=p.batch,
                                     seqlen=p.seqlen, nheads=p.nheads, headdim=hd, causal=causal,
                                     impl=f"H100 paper: {series}", kind="paper", status="paper", tflops=value))
    return rows


@dataclass(frozen=True)
class ThroughputFigure:
    """One of the paper's throughput figures (5, 6 or 7)."""
    name: str                 # CLI name and output stem
    title: str
    mode: str                 # "fwd" or "bwd" (kernels.flops mode)
    dtype: torch.dtype        # input dtype handed to every candidate
    roster: tuple
    paper: dict               # paper_figures.FIG*
    paper_key: str            # key into paper_figures.SOURCES / NOTES


def run_figure(fig, opts):
    """Measure the grid, then write CSV, markdown, PNG (and W&B); return the process exit code."""
    problems = grid(opts)
    candidates = opts.pick(fig.roster)
    rows = []
    for problem in problems:
        rows += measure(problem, candidates, fig.mode, fig.dtype, opts, fig.name)
    rows += paper_rows(fig.name, fig.paper, fig.mode, problems)
    out_dir = Path(opts.out) / fig.name
    prov = opts.provenance
    paths = [writers.write_csv(out_dir / f"{fig.name}.csv", rows, ROW_COLUMNS, prov)]
    md = outputs.throughput_markdown(fig, rows, candidates, problems, prov, opts.timing_note())
    paths.append(writers.write_text(out_dir / f"{fig.name}.md", md))
    paths.append(outputs.throughput_plot(out_dir / f"{fig.name}.png", fig, rows, problems, prov))
    if opts.wandb:
        writers.log_wandb(fig.name, rows, ROW_COLUMNS, [paths[-1]], prov, out_dir, group="paper")
    for p in paths:
        print(f"wrote {p}")
    return 1 if any(r["status"] == "error" for r in rows) else 0

