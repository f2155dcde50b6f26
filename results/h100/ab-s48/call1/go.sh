# One device call: an H200 runs issue 5's bars; any other GPU checks two fixed tests and A/Bs the hd256 amax merge.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:/tmp/site WANDB_MODE=offline PYTHONUNBUFFERED=1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); echo "$gpu"
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit,driver_version --format=csv,noheader
FIXED="tests/kernels/test_gluon_backward.py::test_gpu_backward_hands_dq_over_in_float32 tests/kernels/test_quant.py::test_flat_descriptors_quantize_alike"
if [[ "$gpu" == *H200* ]]; then
  FP8TRAIN_COMMIT=${COMMIT} BARS_BUDGET_S=$((${END:-540} - 95)) BARS_TESTS="half_diagonal or q_in_registers" bash experiments/h200_session.sh bars
  timeout $((${END:-540} + 30 - SECONDS)) python3 -m pytest -q -n 8 -p no:cacheprovider $FIXED > $OUT/fixed_tests.log 2>&1
  echo "fixed tests rc $?"; tail -3 $OUT/fixed_tests.log
else
  FIXED="$FIXED" bash .ab/ab.sh
fi
