# flat vs old: the amax of a tile as one tl.reduce over both axes, against axis 1 then axis 0 (HEAD).
set -u
mkdir -p $OUT/r
END=${END:-560}
rm -rf /tmp/flat && mkdir /tmp/flat && cp -r kernels fp8train experiments tests pyproject.toml /tmp/flat/ && cp -r .ab/flat/kernels/. /tmp/flat/kernels/
(cd /tmp/flat && PYTHONPATH=/tmp/flat:/tmp/site timeout 170 python3 -m pytest -q -n 6 -p no:cacheprovider tests/kernels/test_quant.py) > $OUT/r/flat_quant_tests.log 2>&1 &
(cd /tmp/flat && PYTHONPATH=/tmp/flat:/tmp/site timeout 170 python3 -m pytest -q -n 4 -p no:cacheprovider -m "gpu or hopper" \
  tests/kernels/test_fp8_attention.py tests/kernels/test_fp8_backward.py) > $OUT/r/flat_fp8_tests.log 2>&1 &
wait
for t in quant fp8; do echo "flat $t tests at $SECONDS s"; tail -3 $OUT/r/flat_${t}_tests.log; done
for r in 1 2 3; do
  for t in old flat; do
    [ $((END - SECONDS)) -lt 150 ] && break 2
    d=$PWD; [ $t != old ] && d=/tmp/flat
    (cd $d && PYTHONPATH=$d:/tmp/site timeout 70 python3 -m experiments.tune_fp8 --steps prepass --out $OUT/r/tune_${t}$r) > $OUT/r/tune_${t}$r.log 2>&1
    echo "== $t $r rc $? at $SECONDS s"
    grep '"tiles"' $OUT/r/tune_${t}$r.log | python3 -c "
import sys, json
for l in sys.stdin:
    r = json.loads(l); print(r['prepass_head_dim'], r['tiles'], 'ms %.4f graph %.4f ok %s' % (r.get('ms', 0), r.get('graph_ms', 0), r.get('ok', r.get('error'))))"
  done
done
for r in 1 2 3; do
  for t in old flat; do
    [ $((END - SECONDS)) -lt 60 ] && break 2
    d=$PWD; [ $t != old ] && d=/tmp/flat
    (cd $d && PYTHONPATH=$d:/tmp/site timeout 90 python3 -m experiments.paper fp8 --impls ours-fp8,ours-fp8-kernel \
      --headdims 256 --seqlens 1024,4096,16384 --out $OUT/r/op_${t}$r) > $OUT/r/op_${t}$r.log 2>&1
    echo "== op $t $r rc $? at $SECONDS s"; grep -v "^\s*$" $OUT/r/op_${t}$r.log | tail -8
  done
done
tar czf $OUT/r.tgz -C $OUT r && rm -rf $OUT/r
