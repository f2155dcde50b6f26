# The FP8 op at hd256 with and without the merged amax reduction, interleaved rounds (any sm_90 GPU).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:/tmp/site WANDB_MODE=offline PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit,driver_version --format=csv,noheader
END=${END:-400}
mkdir -p $OUT/r
rm -rf /tmp/new && mkdir /tmp/new && cp -r kernels fp8train experiments tests pyproject.toml /tmp/new/ && cp -r .ab/new/kernels/. /tmp/new/kernels/
for r in 1 2 3; do
  for t in old new; do
    [ $((END - SECONDS)) -lt 80 ] && break 2
    d=$PWD; [ $t != old ] && d=/tmp/new
    (cd $d && PYTHONPATH=$d:/tmp/site timeout 100 python3 -m experiments.paper fp8 --impls ours-fp8,ours-fp8-kernel \
      --headdims 256 --seqlens 1024,4096,16384 --out $OUT/r/${t}$r) > $OUT/r/${t}$r.log 2>&1
    echo "== $t $r rc $? at $SECONDS s"; grep -v "^\s*$" $OUT/r/${t}$r.log | tail -8
  done
done
tar czf $OUT/r2.tgz -C $OUT r && rm -rf $OUT/r
