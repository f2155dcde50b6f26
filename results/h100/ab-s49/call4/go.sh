# One device call: an H200 runs issue 5's bars; any other GPU A/Bs the amax reductions (old / flat / flatqk).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:/tmp/site WANDB_MODE=offline PYTHONUNBUFFERED=1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit,driver_version --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.backends.cudnn.version())"
if [[ "$gpu" == *H200* && -n "${BARS:-}" ]]; then
  FP8TRAIN_COMMIT=${COMMIT} BARS_BUDGET_S=${BARS_END:-540} BARS_TESTS="half_diagonal or q_in_registers" bash experiments/h200_session.sh bars
else
  bash .ab/ab.sh
fi
