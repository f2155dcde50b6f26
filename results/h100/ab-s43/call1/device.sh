# Session 43's device call: on an H200 issue 5's bars, then the dispatch tests; on another GPU the dispatch and
# launch-plan tests and a host-time A/B (new: auto at any length + Triton forward plans; old: cc2d3ea's ops/fp8,
# 0e7d4f6's Triton forwards).
G=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); echo "$G"
pip install -q --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:/tmp/site WANDB_MODE=offline PYTHONUNBUFFERED=1 FP8TRAIN_COMMIT=$1
T="tests/kernels/test_api.py tests/kernels/test_fp8_attention.py tests/kernels/test_launch.py tests/experiments/test_paper.py::test_runner_times_and_checks_on_cuda"
if echo "$G" | grep -q H200; then
  BARS_BUDGET_S=460 BARS_TESTS="half_diagonal or q_in_registers" bash experiments/h200_session.sh bars
  timeout $((585 - SECONDS)) python3 -m pytest -q -m "gpu or hopper" -p no:cacheprovider $T > $OUT/api_tests.log 2>&1; tail -3 $OUT/api_tests.log
  exit 0
fi
timeout 150 python3 -m pytest -q -m "gpu or hopper" -p no:cacheprovider $T > $OUT/api_tests.log 2>&1; tail -3 $OUT/api_tests.log
rm -rf /tmp/old && cp -r $PWD /tmp/old && cp .ab/ops_old.py /tmp/old/kernels/ops.py && cp .ab/fp8_old.py /tmp/old/kernels/fp8.py
cp .ab/fwd_old.py /tmp/old/kernels/triton/fwd.py && cp .ab/fp8_fwd_old.py /tmp/old/kernels/triton/fp8_fwd.py
for r in 1 2; do
  for t in new old; do
    d=$PWD; [ $t = old ] && d=/tmp/old
    (cd $d && PYTHONPATH=$d:/tmp/site timeout 70 python3 -m experiments.host_overhead --shapes shakespeare,hd64_1k_causal --out $OUT/$t$r > $OUT/$t$r.log 2>&1)
    echo "== $t$r $SECONDS"; sed -n "/^shape /,\$p" $OUT/$t$r.log
  done
done
timeout $((580 - SECONDS)) python3 -m pytest -q -m "gpu or hopper" -p no:cacheprovider tests/kernels/test_triton_attention.py > $OUT/triton_tests.log 2>&1; tail -3 $OUT/triton_tests.log
tar czf /tmp/ab.tgz -C $OUT . && rm -rf $OUT/* && cp /tmp/ab.tgz $OUT/
