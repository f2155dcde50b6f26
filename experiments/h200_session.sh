#!/usr/bin/env bash
# The H200 measurements behind results/, in phases that each fit one 10-minute device call.
#
#   bash experiments/h200_session.sh train   # training runs, side by side (not timed), + the GPU test suite
#   bash experiments/h200_session.sh bench   # timed work, alone on the GPU: GPT-2 throughput, paper tables
#   bash experiments/h200_session.sh fp8     # only the FP8 training runs of `train` (BF16 vs FP8, quant sweep)
#   bash experiments/h200_session.sh kernels # after a kernel change: the GPU kernel tests, then the paper's kernel tables
#   bash experiments/h200_session.sh bars    # issue 5's verdict in one call: the tables, their bars, then the Gluon
#                                            # forward's GPU tests in the time left (on another GPU: results/<gpu>/)
#
# Expects the project's dependencies importable (offline: fp8train-wheelhouse, README) and
# tinyshakespeare.txt under $FP8TRAIN_DATA_DIR. Run dirs go to runs/h200/, tables to results/h200/;
# with $OUT set (the device tool), a tarball of both lands there.
set -uo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline} WANDB_SILENT=true PYTHONUNBUFFERED=1
export FP8TRAIN_DATA_DIR=${FP8TRAIN_DATA_DIR:-$PWD/data}
R=runs/h200
OUT=${OUT:-$PWD/out}
mkdir -p "$R" results/h200 "$OUT"
# The GPU tests in parallel where pytest-xdist is installed (not a project dependency).
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 6")
train() {  # train RUN_DIR OVERRIDE...: one run, its console output kept beside its metrics
  local dir=$1; shift
  mkdir -p "$dir" && python3 -m fp8train.train "$@" hydra.run.dir="$dir" > "$dir/console.log" 2>&1
}

# The paper tables' implementations (FlexAttention and SDPA's math backend left out: per-shape compiles and O(s^2)
# memory would not fit a call).
PAPER_IMPLS=ours-gluon,ours-triton,ours-fp8,ours-fp8-gluon,ours-fp8-triton,ours-fp8-kernel,ours-bf16,sdpa-cudnn,sdpa-flash,fa3,fa3-fp8,ours-gluon-no-pipelining,ours-gluon-no-warp-specialization,ours-gluon-no-pingpong

paper_tables() {  # paper_tables DIR IMPLS: every paper table into DIR, then issue 5's bars read from them
  python3 -m experiments.paper all --out "$1" --impls "$2" > "$OUT/paper.log" 2>&1
  tail -5 "$OUT/paper.log"
  python3 -m experiments.paper.bars "$1" --out "$1/bars.md" | tail -14
}

wait_for_jobs() {  # wait for the background runs, at most $1 seconds, then stop what is left
  local start=$SECONDS
  while [ -n "$(jobs -rp)" ] && [ $((SECONDS - start)) -lt "$1" ]; do sleep 5; done
  jobs -rp | xargs -r kill 2>/dev/null
  wait
  echo "runs took $((SECONDS - start)) s"
}

launch_fp8_runs() {
  # BF16 (our kernels) vs FP8 attention, 2 seeds each: the bf16_vs_fp8 preset's four jobs, run side by side.
  for att in flash fp8; do for seed in 0 1; do
    train $R/bf16_vs_fp8/${att}_seed$seed experiment=bf16_vs_fp8 attention=$att attention.options.impl=triton trainer.seed=$seed &
  done; done
  # Quantization sweep: block size x Hadamard x granularity in e4m3, and two e5m2 points.
  local settings=()
  for b in 64 128; do for h in true false; do for g in block tensor; do settings+=("$b $h $g e4m3"); done; done; done
  settings+=("128 true block e5m2" "128 false tensor e5m2")
  for s in "${settings[@]}"; do
    set -- $s
    train $R/quant_sweep/b$1_h$2_$3_$4 experiment=quant_sweep attention.options.impl=triton attention.options.block_m=$1 \
      attention.options.hadamard=$2 attention.options.granularity=$3 attention.options.fmt=$4 &
  done
}

summarize_fp8_runs() {
  python3 -m experiments.compare $R/bf16_vs_fp8 --baseline flash --out results/h200/bf16_vs_fp8
  python3 -m experiments.sweep_summary $R/quant_sweep $R/bf16_vs_fp8 --out results/h200/quant_sweep
}

phase_train() {
  export TORCHINDUCTOR_COMPILE_THREADS=1  # ~20 compiling processes share 16 cores
  # nanoGPT's Shakespeare baseline, as the preset has it and with a little more dropout: ours has no
  # dropout inside attention (FlashAttention-style kernels take none), nanoGPT has 0.2 there.
  train $R/shakespeare_char experiment=shakespeare_char &
  train $R/shakespeare_char_dropout025 experiment=shakespeare_char model.dropout=0.25 &
  # Our Triton kernel against SDPA in the GPT, 500 steps, same seed.
  for att in triton sdpa; do
    train $R/triton_vs_sdpa/$att experiment=shakespeare_char trainer.max_steps=500 trainer.save_checkpoints=false attention=$att &
  done
  launch_fp8_runs
  # Correctness on the GPU while those train (none of these is timed).
  timeout 400 python3 -m pytest -q -m "gpu or hopper" -p no:cacheprovider tests > "$OUT/gpu_tests.log" 2>&1 &
  wait_for_jobs "${TRAIN_BUDGET_S:-470}"
  python3 -m experiments.compare $R/triton_vs_sdpa --baseline sdpa --out results/h200/triton_vs_sdpa
  summarize_fp8_runs
  tail -3 "$OUT/gpu_tests.log"
}

phase_fp8() {  # the FP8 training runs alone (after a change to the FP8 path)
  export TORCHINDUCTOR_COMPILE_THREADS=1
  launch_fp8_runs
  timeout 300 python3 -m pytest -q -m "gpu or hopper" -p no:cacheprovider tests/kernels/test_api.py \
    tests/kernels/test_fp8_attention.py tests/kernels/test_fp8_backward.py > "$OUT/gpu_tests.log" 2>&1 &
  wait_for_jobs "${TRAIN_BUDGET_S:-400}"
  summarize_fp8_runs
  tail -3 "$OUT/gpu_tests.log"
}

phase_bench() {
  # GPT-2 small throughput: ours (SDPA backend), nanoGPT's bench.py on the same GPU and batch, and ours
  # through torchrun with one process. nanoGPT is not part of the project: put its bench.py, model.py and
  # configurator.py in .peer/nanogpt to include it.
  train $R/gpt2_sdpa experiment=gpt2_throughput
  if [ -f .peer/nanogpt/bench.py ]; then
    (cd .peer/nanogpt && python3 bench.py --batch_size=32 --real_data=False) > "$OUT/nanogpt_bench.log" 2>&1
    tail -1 "$OUT/nanogpt_bench.log"
  fi
  torchrun --standalone --nproc_per_node=1 -m fp8train.train experiment=gpt2_throughput \
    hydra.run.dir=$R/gpt2_sdpa_torchrun > /dev/null 2>&1
  for d in gpt2_sdpa gpt2_sdpa_torchrun; do echo "$d: $(cat $R/$d/summary.json)"; done
  # The paper's figures and tables, SDPA's memory-efficient backend too.
  paper_tables results/h200/paper "${PAPER_IMPLS/sdpa-flash/sdpa-flash,sdpa-efficient}"
}

phase_kernels() {
  timeout 240 python3 -m pytest -q $XDIST -m "gpu or hopper" -p no:cacheprovider tests/kernels > "$OUT/gpu_tests.log" 2>&1
  tail -3 "$OUT/gpu_tests.log"
  paper_tables results/h200/paper "$PAPER_IMPLS"
}

phase_bars() {
  # The tables first: the bars are read from one run of them (~380-430 s on an H200). Another GPU's run goes to
  # its own results directory; experiments.paper.bars says it does not count. A new directory per commit.
  local gpu dir
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  case "$gpu" in *H200*) dir=results/h200 ;; *H100*) dir=results/h100 ;; *) dir=results/other ;; esac
  dir=$dir/paper-${FP8TRAIN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo run)}
  paper_tables "$dir" "$PAPER_IMPLS"
  local left=$((${BARS_BUDGET_S:-585} - SECONDS))
  if [ "$left" -lt 30 ]; then echo "no time left for the GPU tests ($left s)"; return; fi
  # BARS_TESTS: a pytest -k expression to pick the tests the time left should go to (all 228 take longer).
  timeout "$left" python3 -m pytest -q $XDIST -m "gpu or hopper" -p no:cacheprovider -k "${BARS_TESTS:-}" \
    tests/kernels/test_gluon_attention.py > "$OUT/gpu_tests.log" 2>&1
  tail -3 "$OUT/gpu_tests.log"
}

case "${1:-}" in
  train) phase_train ;;
  kernels) phase_kernels ;;
  fp8) phase_fp8 ;;
  bench) phase_bench ;;
  bars) phase_bars ;;
  *) echo "usage: $0 train|fp8|bench|kernels|bars" >&2; exit 2 ;;
esac
# Bring back what the phase made: metrics, summaries and configs, not W&B binaries or checkpoints.
tar czf "$OUT/h200_$1.tgz" --exclude='*/wandb/*' --exclude='*/checkpoints/*' "$R" results/h200 results/h100 \
  results/other 2>/dev/null
ls -la "$OUT"
