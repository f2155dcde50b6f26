#!/bin/bash
# Session 44, second H100 call: test_fp8_backward on the GPU (its Triton-forced tests now on CUDA), GPT-2 flash vs fp8.
set -u
nvidia-smi --query-gpu=name --format=csv,noheader
pip install -q --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
export WANDB_MODE=offline PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
mkdir -p "$OUT/r2"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_fp8_backward.py tests/kernels/test_quant.py tests/kernels/test_fp8_attention.py > "$OUT/r2/tests.log" 2>&1
echo "tests: $(tail -1 $OUT/r2/tests.log)"
for att in flash fp8; do
  python3 -m fp8train.train experiment=gpt2_throughput attention=$att hydra.run.dir=/tmp/runs/$att > "$OUT/r2/gpt2_$att.log" 2>&1
  cp /tmp/runs/$att/summary.json "$OUT/r2/gpt2_$att.json"
  echo "gpt2 $att: $(python3 -c "import json;d=json.load(open('/tmp/runs/$att/summary.json'));print(round(d['tokens_per_s']), d['attn_tflops_per_s'])")"
done
(cd "$OUT" && tar czf r2.tgz r2 && rm -rf r2)
echo "total $SECONDS s"
