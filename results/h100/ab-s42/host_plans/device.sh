# Session 42's device call: on an H200 issue 5's bars; on another GPU the launch plans' checks and host-time A/B.
G=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); echo "$G"
pip install -q --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:/tmp/site WANDB_MODE=offline PYTHONUNBUFFERED=1 FP8TRAIN_COMMIT=$1
if echo "$G" | grep -q H200; then
  BARS_BUDGET_S=460 BARS_TESTS="half_diagonal or q_in_registers" bash experiments/h200_session.sh bars
  timeout 85 python3 -m pytest -q -m gpu -p no:cacheprovider -k "picked or rejects" tests/kernels/test_gluon_backward.py > $OUT/bwd_tests.log 2>&1; tail -3 $OUT/bwd_tests.log
  exit 0
fi
timeout 200 python3 -m pytest -q -p no:cacheprovider -k "picked or rejects or sections_cover or launcher or backward or large_shapes or dq_early or deterministic or writes_every" tests/kernels/test_gluon_backward.py tests/kernels/test_launch.py tests/kernels/test_triton_attention.py > $OUT/tests.log 2>&1; tail -3 $OUT/tests.log
rm -rf /tmp/old && cp -r $PWD /tmp/old && cp .ab/gluon_bwd_old.py /tmp/old/kernels/gluon/bwd.py && cp .ab/triton_bwd_old.py /tmp/old/kernels/triton/bwd.py
for r in 1 2; do
  for t in new old; do
    d=$PWD; [ $t = old ] && d=/tmp/old
    (cd $d && PYTHONPATH=$d:/tmp/site timeout 100 python3 -m experiments.host_overhead --shapes gpt2,hd128_1k,shakespeare --out $OUT/$t$r > $OUT/$t$r.log 2>&1)
    echo "== $t$r"; grep -E "bwd_no_custom|fwd_bwd_1thread|fwd_bwd " $OUT/$t$r.log
  done
done
