#!/usr/bin/env bash
# GPU check for a short lease (<= 8 minutes on one H100/H200, no network, nothing installed
# beyond the README's `pip install -e '.[test]'`):
#   1. the CUDA tests (tiled = whole on CUDA, GPU actors sharing a GPU),
#   2. model-only Mpx/s of the reference U-Net-R18 on CUDA (PyTorch, bf16 autocast),
#   3. `geoseg run` end to end on a 16384² mosaic with --device cuda (land cover, vectors on;
#      chunk 2048 + halo 64 in 512² tiles blended on the GPU, 2 chunks in flight, a reader
#      and writer thread and a vector worker process per core),
#   4. GPU utilisation sampled every 0.5 s by nvidia-smi during 3.
# Prints one JSON line per step and a summary; writes everything under ${OUT:-/tmp/gpu-check}.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-check}"
work="$out/work"
mkdir -p "$work"
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

echo "== 1. CUDA tests"
timeout 150 python -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -5 | tee "$out/tests.txt"

echo "== 2. model only (reference bundle, CUDA)"
python - "$work" <<'PY' | tee "$out/model_only.json"
import json, sys
from pathlib import Path
from benchmarks.bench_pipeline import reference_bundle, scene
work = Path(sys.argv[1])
bundle = reference_bundle(work)
img = scene(16384, work)
print(json.dumps({"bundle": str(bundle), "image": str(img)}))
PY
bundle="$work/ref-bundle"
img="$work/img16384.tif"
timeout 120 python -m benchmarks.variants forward "$img" "$bundle" --engine torch --device cuda \
    --tile 2048 --batch 4 | tee -a "$out/model_only.json"

echo "== 3. geoseg run, 16384², --device cuda (utilisation sampled)"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
    > "$out/nvidia-smi.csv" &
sampler=$!
trap 'kill $sampler 2>/dev/null || true' EXIT
start=$(date +%s.%N)
timeout 240 python -m geoseg -q run "$img" -o "$work/run" --overwrite -m "$bundle" \
    --device cuda --engine torch --chunk-size 2048 --halo 64 | tail -3
end=$(date +%s.%N)
kill $sampler 2>/dev/null || true

echo "== 4. summary"
python - "$out" "$work/run/summary.json" "$start" "$end" <<'PY'
import json, sys
from pathlib import Path
out, summ, start, end = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()), *map(float, sys.argv[3:5])
util = [float(l.split(",")[0]) for l in (out / "nvidia-smi.csv").read_text().splitlines() if l.strip()]
model = [json.loads(l) for l in (out / "model_only.json").read_text().splitlines() if l.startswith("{")][-1]
px = summ["throughput"]["pixels"]
e2e = px / (end - start)
print(json.dumps({"model_only_mpx_s": model["px_per_s"] / 1e6, "end_to_end_mpx_s": e2e / 1e6,
                  "ratio_to_model_only": e2e / model["px_per_s"],
                  "gpu_util_mean": sum(util) / max(1, len(util)), "gpu_util_samples": len(util),
                  "timings_s": summ["timings_s"], "engines": summ["engines"],
                  "runtime": summ["runtime"], "tiling": summ["tiling"]}))
PY
