# One device call: an H200 runs issue 5's bars; any other GPU the fused-dQ-rotation check + A/B + pre-pass profile.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:/tmp/site WANDB_MODE=offline PYTHONUNBUFFERED=1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); echo "$gpu"
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
if [[ "$gpu" == *H200* && "${BARS:-1}" == 1 ]]; then
  FP8TRAIN_COMMIT=${COMMIT} BARS_BUDGET_S=445 BARS_TESTS="half_diagonal or q_in_registers" bash experiments/h200_session.sh bars
  timeout $((560 - SECONDS)) python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_quant.py::test_rotate_back_is_x_times_m_transposed \
    tests/kernels/test_gluon_backward.py::test_gpu_backward_hands_dq_over_in_float32 > $OUT/rot_tests.log 2>&1
  tail -3 $OUT/rot_tests.log
else
  bash .ab/ab.sh
fi
