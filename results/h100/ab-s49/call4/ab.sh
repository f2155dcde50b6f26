# old (HEAD) / flat (every amax one whole-tile reduction) / flatqk (Q's and K's only; V's stays two-step).
set -u
mkdir -p $OUT/r
END=${END:-270}
for t in flat flatqk; do
  rm -rf /tmp/$t && mkdir /tmp/$t && cp -r kernels fp8train experiments tests pyproject.toml /tmp/$t/ && cp -r .ab/$t/kernels/. /tmp/$t/kernels/
done
(cd /tmp/flatqk && PYTHONPATH=/tmp/flatqk:/tmp/site timeout 60 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_quant.py) > $OUT/r/flatqk_tests.log 2>&1
echo "flatqk tests rc $? at $SECONDS s"; tail -2 $OUT/r/flatqk_tests.log
for r in 1 2 3; do
  for t in old flat flatqk; do
    [ $((END - SECONDS)) -lt 25 ] && break 2
    d=$PWD; [ $t != old ] && d=/tmp/$t
    (cd $d && PYTHONPATH=$d:/tmp/site timeout 40 python3 -m experiments.tune_fp8 --steps prepass --out $OUT/r/tune_${t}$r) > $OUT/r/tune_${t}$r.log 2>&1
    echo "== $t $r rc $? at $SECONDS s"
    grep '"tiles"' $OUT/r/tune_${t}$r.log | python3 -c "
import sys, json
for l in sys.stdin:
    r = json.loads(l)
    print(r['prepass_head_dim'], r['tiles'], 'ms %.4f graph %.4f ok %s' % (r.get('ms', 0), r.get('graph_ms', 0), r.get('ok', r.get('error'))))"
  done
done
tar czf $OUT/r.tgz -C $OUT r && rm -rf $OUT/r
