#!/usr/bin/env bash
# Session 45: the FP8 op's saved fp8 operands (61be520) against 37a1e23 (too little device time was left for the bars).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export WANDB_MODE=offline PYTHONUNBUFFERED=1
gpu=$(nvidia-smi --query-gpu=name,clocks.max.sm,power.limit,driver_version --format=csv,noheader | head -1)
echo "gpu: $gpu"; echo "$gpu" > $OUT/gpu.txt
NEW=$PWD; OLD=/tmp/old
rm -rf $OLD && cp -r $NEW $OLD && cp .ab/old/fp8.py $OLD/kernels/fp8.py && cp .ab/old/fp8_quant.py $OLD/kernels/triton/fp8_quant.py \
  && cp .ab/old/host_overhead.py $OLD/experiments/host_overhead.py && rm $OLD/kernels/triton/fp8_dequant.py
mkdir -p "$OUT/r"
start=$SECONDS
PYTHONPATH=$NEW:/tmp/site timeout 150 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_quant.py \
  tests/kernels/test_fp8_backward.py tests/kernels/test_fp8_attention.py tests/kernels/test_launch.py > "$OUT/r/tests.log" 2>&1
echo "tests ($((SECONDS - start)) s): $(tail -1 $OUT/r/tests.log)"; grep -E "^(FAILED|ERROR)" $OUT/r/tests.log | head
for arm in new:fp8 old:fp8 new:flash; do
  [ $SECONDS -gt ${BUDGET:-400} ] && break
  tree=${arm%:*}; att=${arm#*:}; dir=$NEW; [ $tree = old ] && dir=$OLD
  (cd $dir && PYTHONPATH=$dir:/tmp/site timeout 120 python3 -m fp8train.train experiment=gpt2_throughput attention=$att \
    hydra.run.dir=/tmp/runs/gpt2_${att}_$tree > "$OUT/r/gpt2_${att}_$tree.log" 2>&1)
  cp /tmp/runs/gpt2_${att}_$tree/summary.json "$OUT/r/gpt2_${att}_$tree.json"
  echo "gpt2 $att $tree ($((SECONDS - start)) s): $(python3 -c "import json;d=json.load(open('$OUT/r/gpt2_${att}_$tree.json'));print(round(d['tokens_per_s']), d['attn_tflops_per_s'], d['peak_mem_gb'], d['final_loss'])")"
done
P=fp8_fwd_bwd,fp8_bwd_direct,fp8_fwd,ours_fwd_bwd
for run in new1 old1; do
  [ $SECONDS -gt ${BUDGET:-400} ] && break
  dir=$NEW; [ ${run%?} = old ] && dir=$OLD
  (cd $dir && PYTHONPATH=$dir:/tmp/site timeout 100 python3 -m experiments.host_overhead --out "$OUT/r/$run" \
    --shapes gpt2,hd128_4k --paths $P > "$OUT/r/$run.log" 2>&1)
  echo "== $run ($((SECONDS - start)) s)"; grep -E "fp8_bwd_direct|fp8_fwd_bwd|ours_fwd_bwd" "$OUT/r/$run.log" | tail -8
done
(cd "$OUT" && tar czf r.tgz r && rm -rf r)
echo "total $SECONDS s"
