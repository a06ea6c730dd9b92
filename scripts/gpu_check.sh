#!/usr/bin/env bash
# The CUDA check, for a machine with an NVIDIA GPU (this project's CI machine has none):
#   1. every pipeline command on CUDA in bf16, tiny budgets (RL: reference and reward model in bf16);
#   2. the quick demo on CUDA (--device auto picks it);
#   3. with two GPUs or more: the multi-process equivalence tests with nccl (PREFTUNE_TEST_DEVICE=cuda).
# Prints PASS/FAIL per check and a one-line verdict; exit status 0 only if every check that ran passed.
#   scripts/gpu_check.sh            (uses .venv/bin if it exists, else the preftune on PATH)
#   GPU_CHECK_DEVICE=cpu scripts/gpu_check.sh    a dry run of the same commands on the CPU
set -u
cd "$(dirname "$0")/.."
BIN=$([ -x .venv/bin/preftune ] && echo .venv/bin/ || echo "")
OUT=${GPU_CHECK_OUT:-/tmp/preftune-gpu-check}
rm -rf "$OUT" && mkdir -p "$OUT"
passed=0 failed=0
check() {  # check NAME COMMAND...: run it, log to $OUT/NAME.log, print PASS/FAIL with the time taken
  local name=$1 start=$SECONDS; shift
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "PASS $name ($((SECONDS - start)) s)"; passed=$((passed + 1))
  else
    echo "FAIL $name ($((SECONDS - start)) s), last lines of $OUT/$name.log:"; tail -n 8 "$OUT/$name.log" | sed 's/^/    /'
    failed=$((failed + 1))
  fi
}

[ "${GPU_CHECK_DEVICE:-cuda}" = cuda ] && check cuda "${BIN}python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count())"
GPUS=$("${BIN}python" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
DEV=${GPU_CHECK_DEVICE:-cuda}
P="${BIN}preftune"
D=$OUT/data
T=(--device "$DEV" --train.precision bf16 --train.no-progress --tokens.max-length 64)
check world "$P" world --out "$D" --corpus 2000 --sft 400 --prompts 64 --heldout 32
check pretrain "$P" pretrain --data "$D/corpus.jsonl" --train.out "$OUT/base" --train.max-steps 60 "${T[@]}"
check sft "$P" sft --model "$OUT/base" --data "$D/sft.jsonl" --train.out "$OUT/sft" --train.max-steps 40 "${T[@]}"
check sample "$P" sample --model "$OUT/sft" --prompts "$D/prompts.jsonl" --k 4 --out "$OUT/sets.jsonl" --device "$DEV"
check annotate "$P" annotate --simulated --samples "$OUT/sets.jsonl" --out "$OUT/pairs.jsonl"
check reward "$P" reward --model "$OUT/sft" --data "$OUT/pairs.jsonl" --train.out "$OUT/rm" --train.max-steps 20 "${T[@]}"
check dpo "$P" dpo --model "$OUT/sft" --data "$OUT/pairs.jsonl" --train.out "$OUT/dpo" --train.max-steps 20 "${T[@]}"
for algo in rloo grpo ppo; do
  check "rl-$algo" "$P" rl --model "$OUT/sft" --reward "$OUT/rm" --prompts "$D/prompts.jsonl" --algo "$algo" --iterations 2 \
    --prompts-per-iter 8 --frozen-precision bf16 --train.out "$OUT/rl-$algo" "${T[@]}"
done
check best-of-n "$P" best-of-n --model "$OUT/sft" --reward "$OUT/rm" --prompts "$D/heldout.jsonl" --n 4 --device "$DEV"
check eval "$P" eval --model "$OUT/sft" "$OUT/dpo" "$OUT/rl-ppo" --reference "$OUT/sft" --prompts "$D/heldout.jsonl" --device "$DEV"
check demo-quick "$P" demo --quick --out "$OUT/demo"  # --device auto in every stage: CUDA when there is one
if [ "${GPUS:-0}" -ge 2 ]; then
  check nccl-equivalence env PREFTUNE_TEST_DEVICE=cuda "${BIN}python" -m pytest -q tests/test_distributed.py
else
  echo "SKIP nccl-equivalence (${GPUS:-0} GPU; needs 2)"
fi
echo "verdict: $passed passed, $failed failed (logs in $OUT)"
[ "$failed" -eq 0 ]
