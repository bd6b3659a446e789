#!/usr/bin/env bash
# The one prepared GPU check of issue 4 (decode once, augment on the device), for the lent H200
# (no network; its python3 has torch and torchvision but not Hydra). From the repo root:
#
#   device run:  command "bash scripts/gpu_bench.sh"   carry [".whl", ".bench_data"]   timeout_s 330
#
# 1. installs what is missing there: .whl/ holds the pure-Python wheels (hydra-core, omegaconf,
#    antlr4-python3-runtime, fvcore, iopath, yacs, termcolor); the project is copied, not built.
# 2. data: .bench_data/caltech101-animals (real photos, a copy of /work/shared/datasets/...) when
#    carried, else the demo generator with 400 images per class.
# 3. `animalcls bench` on CUDA: model=base (batch 16, the paper's, and 128), mobilenet_v3_large.
# 4. `animalcls train ... device=cuda epochs=1`: the end-to-end check.
# 5. accuracy after 3 epochs, amp=bf16 vs amp=off, seeds 0 and 1 (model=base), one -m sweep.
# 6. prints the ratios (target on CUDA: engine/limit >= 0.85) and the accuracy table.
# Takes about 2-3 minutes; a deadline (DEADLINE, default 235 s) caps every step, so it ends < 4 min.
# Writes into $OUT (or outputs/gpu_bench): env.txt bench.log bench-{base,base-bs128,mobilenet_v3_large}.json
# train.log results.csv summary.txt (8 files).
#
# .whl/ and .bench_data/ are ignored through .git/info/exclude. To rebuild them:
#   pip download --no-deps -d .whl hydra-core==1.3.2 omegaconf==2.3.0 yacs==0.1.8 termcolor==3.3.0
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3 fvcore==0.1.5.post20221221 iopath==0.1.10
#   mkdir -p .bench_data && cp -r /work/shared/datasets/caltech101-animals .bench_data/
# A dry run elsewhere: DEVICE=cpu DATA=/tmp/x PER_CLASS=8 CAPS="bench.batches=1 bench.warmup=0" EPOCHS=1 SEEDS=0
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-outputs/gpu_bench}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-235}
DEVICE=${DEVICE:-cuda}
PY=python3
left() { local l=$((DEADLINE - SECONDS)); [ "$1" -lt "$l" ] && echo "$1" || echo $((l > 5 ? l : 5)); }
say() { echo "[gpu_bench $((SECONDS))s] $*"; }

# 1. set-up
site=/tmp/animalcls-site
rm -rf "$site" && mkdir -p "$site"
if ! $PY -c "import hydra, omegaconf, fvcore" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "Hydra is missing and there is no .whl/: carry [\".whl\"]"; exit 2; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || exit 2
fi
cp -r src/animalcls "$site/animalcls" && cp -r conf "$site/animalcls/conf"   # the package as installed
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  $PY -c "import sys, torch, torchvision, hydra, animalcls; print(sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'hydra', hydra.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"
  echo "cpus $(nproc)"; git log -1 --format='commit %h %s' 2>/dev/null; git status --short 2>/dev/null | head -30
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 2. data
if [ -n "${DATA:-}" ]; then
  :
elif [ -d .bench_data/caltech101-animals ]; then
  DATA=$PWD/.bench_data/caltech101-animals
else
  PER_CLASS=${PER_CLASS:-400}
  DATA=/tmp/animalcls-demo-$PER_CLASS
  timeout 60 $PY -c "from animalcls.demo import ensure_demo_data; ensure_demo_data('$DATA', images_per_class=$PER_CLASS)" \
    || exit 2
fi
say "data: $DATA ($(find "$DATA" -type f | wc -l) files)"

# 3. the benchmarks
CAPS=${CAPS:-bench.batches=100 bench.warmup=20 bench.eval_batches=20 bench.rounds=2}
bench() {  # name, timeout, overrides...
  local name=$1 limit; limit=$(left "$2"); shift 2
  echo "=== animalcls bench $* data.root=$DATA device=$DEVICE workers=8 $CAPS" | tee -a "$OUT/bench.log"
  timeout "$limit" $PY -m animalcls bench "$@" data.root="$DATA" device="$DEVICE" workers=8 $CAPS \
      bench.out="$OUT/bench-$name.json" 2>&1 | tee -a "$OUT/bench.log"
  say "bench $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/bench.log"
}
bench base 60 model=base
# 224 px and depthwise layers: fewer batches, one round, no cold decode, or it outruns its cap
CAPS="bench.batches=40 bench.warmup=10 bench.eval_batches=10 bench.rounds=1 bench.cold=false" \
  bench mobilenet_v3_large 75 model=mobilenet_v3_large
bench base-bs128 45 model=base batch_size=128

# 4. + 5. training on CUDA: one epoch end to end, then the accuracy sweep (all rows in one table)
RESULTS=/tmp/animalcls-results/results.csv
TRAIN=(model=base data.root="$DATA" data.cache_dir=/tmp/animalcls-cache device="$DEVICE" workers=8 results=$RESULTS)
echo "=== animalcls train ${TRAIN[*]} epochs=1" | tee "$OUT/train.log"
timeout "$(left 45)" $PY -m animalcls train "${TRAIN[@]}" epochs=1 hydra.run.dir=/tmp/animalcls-run \
    2>&1 | tee -a "$OUT/train.log"
say "train: exit ${PIPESTATUS[0]}" | tee -a "$OUT/train.log"
SWEEP=(epochs=${EPOCHS:-3} amp=bf16,off seed=${SEEDS:-0,1} tags=[accuracy_amp])
echo "=== animalcls train -m ${TRAIN[*]} ${SWEEP[*]}" | tee -a "$OUT/train.log"
timeout "$(left 90)" $PY -m animalcls train -m "${TRAIN[@]}" "${SWEEP[@]}" hydra.sweep.dir=/tmp/animalcls-multirun \
    2>&1 | tee -a "$OUT/train.log"
say "accuracy sweep: exit ${PIPESTATUS[0]}" | tee -a "$OUT/train.log"
cp "$RESULTS" "$OUT/results.csv" 2>/dev/null

# 6. summary
$PY - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'bench':<20}{'precision':>10}{'limit img/s':>13}{'engine img/s':>14}{'engine/limit':>14}"
      f"{'old img/s':>11}{'engine/old':>12}{'eval img/s':>12}{'syncs/batch':>13}")
for f in sorted(out.glob("bench-*.json")):
    r = json.loads(f.read_text())
    m, q = r["measurements"], r["ratios"]
    old = m.get("old_pil", {}).get("images_per_s", float("nan"))
    print(f"{f.stem[6:]:<20}{r['precision']:>10}{m['limit_' + r['precision']]['images_per_s']:>13.0f}"
          f"{m['engine_warm']['images_per_s']:>14.0f}{q['engine_over_limit']:>14.3f}{old:>11.0f}"
          f"{q.get('engine_over_old', float('nan')):>12.2f}{m['eval']['images_per_s']:>12.0f}"
          f"{m['engine_warm'].get('cuda_syncs_per_warmup_batch', float('nan')):>13.2f}")
try:
    import pandas as pd
    t = pd.read_csv(out / "results.csv")
    t = t[t["tags"].astype(str).str.contains("accuracy_amp")]
    if len(t):
        print()
        cols = ["precision", "seed", "epochs", "status", "val_top1", "test_top1", "test_top5", "train_seconds",
                "images_per_s"]
        print(t.sort_values(["precision", "seed"])[cols].to_string(index=False))
        print(t.groupby("precision")[["val_top1", "test_top1", "test_top5"]].mean().round(2).to_string())
except Exception as exc:  # the summary must not hide the files
    print(f"(no accuracy table: {type(exc).__name__}: {exc})")
EOF
say "all done"
