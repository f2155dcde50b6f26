# Session 43's second device call: on an H200 issue 5's bars; on another GPU the dQ-zeroing preprocess's A/B
# (old: 43e032f's backward hosts and preprocess), a host profile at the shakespeare shape, the backward table's
# new gradient-error column, then the Gluon backward's GPU tests.
G=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); echo "$G"
pip install -q --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:/tmp/site WANDB_MODE=offline PYTHONUNBUFFERED=1 FP8TRAIN_COMMIT=$1
if echo "$G" | grep -q H200; then
  BARS_BUDGET_S=520 BARS_TESTS="half_diagonal or q_in_registers" bash experiments/h200_session.sh bars
  exit 0
fi
rm -rf /tmp/old && cp -r $PWD /tmp/old && cp .ab/gluon_bwd_old.py /tmp/old/kernels/gluon/bwd.py && cp .ab/triton_bwd_old.py /tmp/old/kernels/triton/bwd.py
for r in 1 2; do
  for t in new old; do
    d=$PWD; [ $t = old ] && d=/tmp/old
    (cd $d && PYTHONPATH=$d:/tmp/site timeout 70 python3 -m experiments.host_overhead --shapes shakespeare,hd128_1k,hd128_4k --out $OUT/$t$r > $OUT/$t$r.log 2>&1)
    echo "== $t$r $SECONDS"; grep -E "bwd|^shape" $OUT/$t$r.log | grep -v "^{"
  done
done
timeout 90 python3 -m experiments.host_overhead --profile --shapes shakespeare --out $OUT/profile > $OUT/profile.log 2>&1
timeout 100 python3 -m experiments.paper bwd --out $OUT/paper --headdims 64,128 --seqlens 512,2048 --impls ours-gluon,ours-triton,sdpa-cudnn,sdpa-flash --rounds 1 > $OUT/paper_bwd.log 2>&1
grep -E "^\|" $OUT/paper/bwd/bwd.md | tail -12
timeout $((580 - SECONDS)) python3 -m pytest -q -m "gpu or hopper" -p no:cacheprovider tests/kernels/test_gluon_backward.py tests/kernels/test_triton_attention.py -k "not exp2" > $OUT/bwd_tests.log 2>&1; tail -3 $OUT/bwd_tests.log
tar czf /tmp/ab.tgz -C $OUT . && rm -rf $OUT/* && cp /tmp/ab.tgz $OUT/
