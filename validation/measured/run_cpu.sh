#!/usr/bin/env bash
# The committed CPU campaign: one run file per shape in validation/measured/cpu/.
# Usage: validation/measured/run_cpu.sh [shape ...]   (default: all three; run from the repository root)
set -euo pipefail
THREADS=${THREADS:-1}
NOTES=${NOTES:-"2-core CPU shared with other jobs (one core was kept busy by another job while the campaign was \
planned; provenance.host_load gives the other load during this run): torch ran on 1 thread, which a job on the \
other core does not disturb (2 threads under such load gave p90/p10 up to 2.8 from straggling OpenMP threads). \
Prefill batch 64 x 1024 tokens skipped (--max-prefill-tokens 16384: over a minute per forward on one thread). \
Shapes scaled from the catalogue configs (validation/measured/shapes/) to keep each run file at ~3-4 min."}
shapes=("$@")
[ ${#shapes[@]} -eq 0 ] && shapes=(mixtral-like olmoe-like deepseek-like)
busy() {  # percent of the machine's CPU time busy over 5 s
  local a b
  a=($(head -1 /proc/stat)); sleep 5; b=($(head -1 /proc/stat))
  local t=0 i=0
  for k in 1 2 3 4 5 6 7 8; do t=$((t + b[k] - a[k])); done
  i=$((b[4] - a[4] + b[5] - a[5]))
  echo $(( t > 0 ? 100 * (t - i) / t : 0 ))
}
for s in "${shapes[@]}"; do
  for _ in $(seq 120); do  # wait (up to 10 min) until other jobs leave the CPU mostly idle
    [ "$(busy)" -lt "${MAX_BUSY:-15}" ] && break
  done
  capsim measure --model "validation/measured/shapes/$s.json" --random-init \
    --prompt-lens 128,1024 --batches 1,4,16,64 --context 128,1024 --repeats 5 --warmup 2 --dtype float32 \
    --threads "$THREADS" --max-prefill-tokens 16384 --seed 0 --notes "$NOTES" \
    --out "validation/measured/cpu/$s.json"
done
