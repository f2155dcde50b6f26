set -u
mkdir -p $OUT/r
END=${END:-560}
timeout 200 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_quant.py::test_rotate_back_is_x_times_m_transposed \
  tests/kernels/test_fp8_backward.py tests/kernels/test_gluon_backward.py::test_gpu_backward_hands_dq_over_in_float32 \
  "tests/kernels/test_quant.py::test_flat_descriptors_quantize_alike" > $OUT/r/tests.log 2>&1
echo "tests rc $? at $SECONDS s"; tail -6 $OUT/r/tests.log
timeout 170 python3 -m experiments.tune_fp8 --steps prepass --out $OUT/r/tune > $OUT/r/tune.log 2>&1
echo "tune rc $? at $SECONDS s"; grep -v "^{" $OUT/r/tune.log | tail -12
grep '"tiles"' $OUT/r/tune.log | python3 -c "
import sys, json
for l in sys.stdin:
    r = json.loads(l); print(r['prepass_head_dim'], r['tiles'], 'ms %.4f graph %.4f GB/s %.0f ok %s' % (r.get('ms', 0), r.get('graph_ms', 0), r.get('gb_per_s', 0), r.get('ok', r.get('error'))))"
rm -rf /tmp/old && mkdir /tmp/old && cp -r kernels fp8train experiments /tmp/old/ && cp -r .ab/old/kernels/. /tmp/old/kernels/
for r in 1 2; do
  for t in new old; do
    [ $((END - SECONDS)) -lt 70 ] && break 2
    d=$PWD; [ $t = old ] && d=/tmp/old
    (cd $d && PYTHONPATH=$d:/tmp/site timeout 80 python3 -m experiments.host_overhead --shapes gpt2,hd128_4k \
      --paths fp8_bwd_direct,fp8_fwd_bwd,ours_fwd_bwd --out $OUT/r/${t}$r) > $OUT/r/ho_${t}$r.log 2>&1
    echo "== $t $r rc $? at $SECONDS s"; tail -8 $OUT/r/ho_${t}$r.log
  done
done
left=$((END - SECONDS))
[ $left -gt 80 ] && timeout $left python3 -m experiments.profile_kernels --out $OUT/r/ncu --targets fp8op_hd256_16k \
  --timeout $((left - 10)) > $OUT/r/ncu.log 2>&1 && head -60 $OUT/r/ncu/summary.txt
rm -f $OUT/r/ncu/*.ncu-rep
tar czf $OUT/r.tgz -C $OUT r && rm -rf $OUT/r
