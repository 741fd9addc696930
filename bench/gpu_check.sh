#!/usr/bin/env bash
# The GPU check: what this project's CPU machines cannot measure, on one NVIDIA GPU, in under 8 minutes on an H100.
#
#   1. generation  a full-size Qwen2-VL-2B (random weights) in bf16: time to first token with one photo, decode
#                  tokens/s, peak memory (bench_chat --parts full)
#   2. serving     vLLM's CUDA build serving it with a runtime LoRA adapter, as Loupe serves it: base and adapter,
#                  1 and 8 streams, time to first token and tokens/s (bench_vllm_lora)
#   3. training    20 DPO steps of LoRA and of QLoRA on it: samples/s and peak GPU memory (bench_train)
#
# Each part's table is appended to bench/RESULTS.md under a heading that names the GPU, with the machine and the
# commit; a part that fails or runs out of its time is recorded as such, and the others still run.
# It needs what `make` installs on a machine with an NVIDIA GPU and network: the app's environment, bitsandbytes
# (`make qlora`) and vLLM's CUDA build (.venv-vllm, which `make vllm` installs where nvidia-smi finds a GPU):
#
#     make install qlora .venv-vllm/.installed && bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
if [ -z "$gpu" ]; then
  echo "bench/gpu_check.sh: no NVIDIA GPU answers nvidia-smi, and this check measures one." >&2
  exit 1
fi
for ready in .venv/.installed .venv-qlora/.installed .venv-vllm/.installed; do
  if [ ! -e "$ready" ]; then
    echo "bench/gpu_check.sh: $ready is missing: run \`make install qlora .venv-vllm/.installed\` first." >&2
    exit 1
  fi
done

out=$(mktemp -d -t loupe-gpu-check-XXXXXX)
declare -A outcome
# part SECONDS COMMAND...: run one part with its output kept in $out/PART.txt, for at most SECONDS.
part() {
  local name=$1 limit=$2
  shift 2
  echo "== $name: at most $limit s" >&2
  local started=$SECONDS
  if timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"; then
    outcome[$name]="done in $((SECONDS - started)) s"
  else
    outcome[$name]="FAILED or stopped after $((SECONDS - started)) s (limit $limit s)"
  fi
}

# The limits add up to 8 minutes; on an H100 each part takes about half of its own.
part generation 90 .venv/bin/python -m bench.bench_chat --parts full --full-dtypes ""
part serving 210 .venv/bin/python -m bench.bench_vllm_lora
part training 180 env PYTHONPATH=.venv-qlora .venv/bin/python -m bench.bench_train --parts full --full-devices cuda \
  --variants loupe,loupe-qlora --steps 20

{
  echo
  echo "## GPU check (\`bench/gpu_check.sh\`): $gpu, $(date -u +%F)"
  echo
  echo '```'
  sed -n '/^Machine:/,/^  commit:/p' "$out/generation.txt"
  echo '```'
  for name in generation serving training; do
    echo
    echo "### $name: ${outcome[$name]}"
    echo
    if ! grep '^|' "$out/$name.txt"; then
      printf 'No table: the part did not finish. Its last lines:\n\n```\n%s\n```\n' "$(tail -n 5 "$out/$name.txt")"
    fi
  done
} >> bench/RESULTS.md
echo "Appended to bench/RESULTS.md; each part's whole output is in $out." >&2
