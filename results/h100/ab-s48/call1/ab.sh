set -u
mkdir -p $OUT/r
END=${END:-570}
timeout 120 python3 -m pytest -q -n 8 -p no:cacheprovider $FIXED > $OUT/r/fixed_tests.log 2>&1
echo "fixed tests rc $? at $SECONDS s"; tail -4 $OUT/r/fixed_tests.log
for t in new join; do  # new: the merged hd256 amax; join: that + one TMA store of Q8/K8's whole row at hd256
  rm -rf /tmp/$t && mkdir /tmp/$t && cp -r kernels fp8train experiments tests pyproject.toml /tmp/$t/ && cp -r .ab/$t/kernels/. /tmp/$t/kernels/
  (cd /tmp/$t && PYTHONPATH=/tmp/$t:/tmp/site timeout 170 python3 -m pytest -q -n 4 -p no:cacheprovider tests/kernels/test_quant.py \
    tests/kernels/test_gluon_backward.py::test_gpu_backward_hands_dq_over_in_float32) > $OUT/r/${t}_tests.log 2>&1 &
done
wait
for t in new join; do echo "$t tests at $SECONDS s"; tail -4 $OUT/r/${t}_tests.log; done
for r in 1 2 3; do
  for t in old new join; do
    [ $((END - SECONDS)) -lt 50 ] && break 2
    d=$PWD; [ $t != old ] && d=/tmp/$t
    (cd $d && PYTHONPATH=$d:/tmp/site timeout 70 python3 -m experiments.tune_fp8 --steps prepass --out $OUT/r/tune_${t}$r) > $OUT/r/tune_${t}$r.log 2>&1
    echo "== $t $r rc $? at $SECONDS s"
    grep '"tiles"' $OUT/r/tune_${t}$r.log | python3 -c "
import sys, json
for l in sys.stdin:
    r = json.loads(l); print(r['prepass_head_dim'], r['tiles'], 'ms %.4f graph %.4f ok %s' % (r.get('ms', 0), r.get('graph_ms', 0), r.get('ok', r.get('error'))))"
  done
done
tar czf $OUT/r.tgz -C $OUT r && rm -rf $OUT/r
