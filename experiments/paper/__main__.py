"""python -m experiments.paper NAME [--quick] [--out DIR] [--wandb]: one of the paper's tables or figures, or all.

NAME: fwd (Fig. 5), bwd (Fig. 6), fp8 (Fig. 7), ablation (Table 2), table3 (Table 3), all.
Each writes OUT/NAME/NAME.{csv,md,png}. The exit code is non-zero when one of
our kernels failed (its row says ERROR), or when `ablation` is asked for by
name on a GPU that lacks our Gluon kernels.
"""
import argparse
import os
import shlex
import sys

import torch

# The tables (and with them `kernels`) are imported only after parse(): see there.
NAMES = ("fwd", "bwd", "fp8", "ablation", "table3")
MAX_HEADDIM = 256


def _tables():
    from experiments.paper import ablation, bwd, fp8, fwd, table3
    return {"fwd": fwd, "bwd": bwd, "fp8": fp8, "ablation": ablation, "table3": table3}


def _impl_names():
    from experiments.paper import ablation, candidates
    return {c.name for c in (*candidates.BF16_ROSTER, *candidates.FP8_ROSTER, *ablation.CONTEXT)} | {
        c.name for c, _ in ablation.VARIANTS}


def _ints(text):
    """Comma-separated positive integers."""
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return values


def _headdims(text):
    values = _ints(text)
    if any(v % 8 or v > MAX_HEADDIM for v in values):
        raise argparse.ArgumentTypeError(f"head dims must be multiples of 8 up to {MAX_HEADDIM}: {text!r}")
    return values


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.paper", description=__doc__.splitlines()[0])
    p.add_argument("name", choices=[*NAMES, "all"])
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes; runs on a CPU (our Triton kernels in Triton's interpreter), timings meaningless")
    p.add_argument("--out", default="outputs/paper", help="output directory (default: %(default)s)")
    p.add_argument("--wandb", action="store_true", help="also log each table to W&B (offline unless WANDB_MODE)")
    p.add_argument("--impls", help="comma-separated implementation names to keep (default: all)")
    p.add_argument("--headdims", type=_headdims, help="comma-separated head dims (default: the paper's)")
    p.add_argument("--seqlens", type=_ints, help="comma-separated sequence lengths (default: the paper's)")
    p.add_argument("--warmup-ms", type=int, default=25, help="do_bench warm-up (default: %(default)s)")
    p.add_argument("--rep-ms", type=int, default=100, help="do_bench measuring time (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved timing rounds per problem on a GPU, the median reported (default: %(default)s; "
                        "the CPU path times one)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.quick and not torch.cuda.is_available():
        # On a CPU our Triton kernels run only in Triton's interpreter, which @triton.jit picks when `kernels`
        # is first imported: hence the tables are imported after this.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    known = _impl_names()
    unknown = set(args.impls.split(",")) - known if args.impls else set()
    if unknown:
        p.error(f"unknown --impls {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    from experiments.paper.runner import Options
    tables = _tables()
    names = list(NAMES) if args.name == "all" else [args.name]
    codes = {}
    for name in names:
        opts = Options(out=args.out, quick=args.quick, wandb=args.wandb,
                       impls=frozenset(args.impls.split(",")) if args.impls else None,
                       headdims=args.headdims, seqlens=args.seqlens, warmup_ms=args.warmup_ms,
                       rep_ms=args.rep_ms, rounds=args.rounds,
                       command=shlex.join(["python", "-m", "experiments.paper", *argv]),
                       explicit=args.name != "all")
        codes[name] = tables[name].run(opts)
    failed = {n: c for n, c in codes.items() if c}
    if failed:
        print(f"non-zero exit codes: {failed}")
    return max(codes.values())


if __name__ == "__main__":
    sys.exit(main())
