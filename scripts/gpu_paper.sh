#!/usr/bin/env bash
# "The whole paper in minutes on one GPU": the prepared device check of CUDA graphs, amp=auto and
# packed sweeps, on the Animals-151 stand-in (data=standin: 151 classes, 6,270 JPEGs of 224 px),
# model.pretrained=false (no network). From the repo root, on a lent H200 (its python3 has torch,
# torchvision, pandas, filelock and tqdm, but not Hydra):
#
#   device run:  command "bash scripts/gpu_paper.sh"   carry [".whl"]   timeout_s 600
#
# .whl/ holds the pure-Python wheels it installs there (ignored by git). To build it:
#   pip download --no-deps -d .whl hydra-core==1.3.2 omegaconf==2.3.0 yacs==0.1.8 termcolor==3.3.0 \
#       hydra-joblib-launcher==1.2.0 joblib==1.4.2
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3 fvcore==0.1.5.post20221221 iopath==0.1.10
#
# Steps (a DEADLINE, default 560 s, caps each one, so the script ends in under 10 minutes; a step
# cut by its cap says so in summary.txt):
#   0. no CUDA: stop at once with exit status 2 and one line saying so (nothing is measured).
#   1. set-up: the wheels, env.txt; the stand-in generated (16 threads) and its decode caches.
#   2. check_graphs.log: graphed vs eager steps on the same numbers (augmentation that draws
#      nothing): SGD+Nesterov and AdamW, with and without a per-step schedule, EMA, clipping,
#      partial batches, fp32 and bf16; losses and weights must agree (exit status 1 otherwise).
#   3. bench-*.json: `animalcls bench` at batch 16, base CNN and MobileNetV3-large, engine img/s
#      with cuda_graphs=off amp=off (fp32 eager), cuda_graphs=on amp=off, cuda_graphs=on amp=bf16.
#   4. curves.csv: the paper's base configuration (Adam, lr 1e-3, batch 16), 3 epochs, cuda_graphs
#      off and on, seeds 0 and 1: the loss curves side by side (graphs change the random stream of
#      the augmentation, not the method: the on/off gap should be within the seed-to-seed gap).
#   5. paper-*.csv/log: the whole paper (all 38 configurations, the train part of
#      scripts/reproduce_paper.sh) at epochs=1 with the new defaults, packed (hydra/launcher=pack,
#      4 jobs) and unpacked (one after another): wall time, runs done, statuses.
#   6. sweep.json (if time is left): `animalcls bench bench.mode=sweep epochs=1`: four paper
#      configurations end to end, old settings (cuda_graphs=off amp=bf16) vs new (auto, auto).
#   7. summary.txt: the tables; a graphs-vs-eager mismatch or a failed step is said at the top.
# Writes into $OUT (the device run's folder) or docs/bench/<date>-h200.
#
# Knobs: DEADLINE=560  MPS=1 (start the CUDA MPS daemon for the packed run, stop it after)
#   DRY_RUN=1: the same steps on the CPU with tiny data and caps (checks this script, measures nothing).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-docs/bench/$(date +%Y-%m-%d)-h200}"
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-560}
DRY_RUN=${DRY_RUN:-0}
PY=python3
left() { local l=$((DEADLINE - SECONDS)); [ "$1" -lt "$l" ] && echo "$1" || echo $((l > 5 ? l : 5)); }
say() { echo "[gpu_paper $((SECONDS))s] $*"; }
problems=()

# 0. CUDA or nothing
if [ "$DRY_RUN" != 1 ]; then
  if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null; then
    echo "gpu_paper.sh: no CUDA device here (torch.cuda.is_available() is False, or no torch): this script" \
         "measures a GPU; nothing was run. (DRY_RUN=1 runs its steps on the CPU, for checking the script.)" >&2
    exit 2
  fi
  DEVICE=cuda
else
  DEVICE=cpu
fi
mkdir -p "$OUT"

# 1. set-up: Hydra & co. from .whl when missing; the package as installed, from this tree
site=/tmp/animalcls-site
rm -rf "$site" && mkdir -p "$site"
if ! $PY -c "import hydra, omegaconf, fvcore, hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_paper.sh: Hydra is missing and there is no .whl/: carry [\".whl\"]" >&2; exit 2; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || exit 2
fi
cp -r src/animalcls "$site/animalcls" && cp -r conf "$site/animalcls/conf"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  $PY -c "import sys, torch, torchvision, hydra, animalcls; print(sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'hydra', hydra.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"
  echo "cpus $(nproc)"; git log -1 --format='commit %h %s' 2>/dev/null; git status --short 2>/dev/null | head -30
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

DATA=/tmp/animalcls-standin
CACHE=/tmp/animalcls-cache
if [ "$DRY_RUN" = 1 ]; then  # a scaled-down stand-in under another name (data=standin would want the full one)
  DATA=$DATA-dry
  $PY -c "from animalcls.demo import ensure_standin_data, standin_counts; ensure_standin_data('$DATA', counts=standin_counts(6, 120), size=96, workers=2)" || exit 2
  DATA_ARGS=(data.root="$DATA" data.cache_dir="$CACHE" model.pretrained=false workers=2)
  TINY=(aug.resize=64 aug.crop=64 eval_batch_size=32)
  CAPS_BASE="bench.batches=3 bench.warmup=1 bench.eval_batches=1"; CAPS_MNV3="$CAPS_BASE"
  PAPER=(+paper_config=base-adam-lr1e-3-bs16-e10-ce,base-adam-lr1e-4-bs16-e10-ce "${TINY[@]}")
  CURVE_EPOCHS=1
else
  timeout "$(left 90)" $PY -c "from animalcls.demo import ensure_standin_data; ensure_standin_data('$DATA', workers=16)" \
    || { echo "gpu_paper.sh: could not generate the stand-in" >&2; exit 2; }
  DATA_ARGS=(data=standin data.root="$DATA" data.cache_dir="$CACHE" model.pretrained=false workers=8)
  TINY=()
  CAPS_BASE="bench.batches=200 bench.warmup=20 bench.eval_batches=20"
  CAPS_MNV3="bench.batches=60 bench.warmup=10 bench.eval_batches=10"
  PAPER=(+experiment=paper/all)
  CURVE_EPOCHS=3
fi
say "data: $(find "$DATA" -name '*.jpg' | wc -l) JPEGs under $DATA"
# both decode caches (112 px for the base CNN, 224 px for the torchvision models) before any clock
timeout "$(left 60)" $PY - "${DATA_ARGS[@]}" <<'EOF' || problems+=("decode caches")
import sys
from animalcls.build import prepare_data
from animalcls.config import compose
for model in ("base", "mobilenet_v3_large"):
    prepare_data(compose([*sys.argv[1:], f"model={model}"]))
EOF
say "set-up done"

# 2. graphed vs eager, on the same numbers
timeout "$(left 90)" $PY - "$DEVICE" >"$OUT/check_graphs.log" 2>&1 <<'EOF'
import copy, sys
import torch
from omegaconf import OmegaConf
from torch import nn
from animalcls.augment import DeviceAugment
from animalcls.build import create_model
from animalcls.data import TensorBatches
from animalcls.ema import ModelEma
from animalcls.engine import evaluate, train_one_epoch
from animalcls.graphs import StepGraphs
from animalcls.steps import Recipe, StepSettings

device = torch.device(sys.argv[1])
aug = OmegaConf.create({"resize": 48, "crop": 48, "hflip": 0.0, "rotation": 0.0, "mean": [0.5] * 3, "std": [0.25] * 3})
torch.manual_seed(0)
base = create_model("base", 5, input_size=48).to(device).to(memory_format=torch.channels_last)
g = torch.Generator().manual_seed(1)
images = torch.randint(0, 256, (8 * 6 + 5, 3, 48, 48), dtype=torch.uint8, generator=g).to(device)
labels = torch.randint(0, 5, (images.shape[0],), generator=g).to(device)
bad = 0
for precision in ("fp32", "bf16"):
    for optim in ("sgd", "adamw"):
        for schedule in (False, True):
            def run(graphed):
                model = copy.deepcopy(base)
                if optim == "adamw":
                    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
                else:
                    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
                sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s)) if schedule else None
                graphs = StepGraphs(8, "on") if graphed else None
                recipe = Recipe(scheduler=sched, ema=ModelEma(model, 0.9), clip_grad_norm=1.0, graphs=graphs)
                batches = TensorBatches(images, labels, 8, device, shuffle=True, seed=0)
                settings = StepSettings(device, precision, progress=False)
                losses = []
                for epoch in (1, 2, 3):
                    batches.set_epoch(epoch)
                    s = train_one_epoch(model, batches, DeviceAugment(aug, True, True), nn.CrossEntropyLoss(), opt,
                                        settings, recipe=recipe)
                    losses.append(s["train_loss"])
                ev = evaluate(recipe.ema.module, batches, DeviceAugment(aug, False, True), nn.CrossEntropyLoss(),
                              settings, graphs=graphs)
                weights = torch.cat([p.detach().float().flatten() for p in model.parameters()])
                return losses, weights, ev, (graphs.reason if graphs else ""), opt.param_groups[0]["lr"]
            eager, graphed = run(False), run(True)
            tol = 1e-4 if precision == "fp32" else 2e-2
            loss_gap = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(eager[0], graphed[0]))
            weight_gap = float((eager[1] - graphed[1]).abs().max() / eager[1].abs().max())
            captured = not graphed[3] or device.type == "cpu"  # a dry run on the CPU falls back, by design
            ok = loss_gap <= tol and weight_gap <= tol and captured and isinstance(graphed[4], float)
            ok = ok and abs(eager[2]["top1"] - graphed[2]["top1"]) <= 100 / 53 + 1e-6
            bad += not ok
            print(f"{'ok  ' if ok else 'BAD '} {precision} {optim:<5} schedule={schedule!s:<5} "
                  f"loss rel gap {loss_gap:.2e}  weight rel gap {weight_gap:.2e}  eval top1 {eager[2]['top1']:.2f} vs "
                  f"{graphed[2]['top1']:.2f}  losses {[round(x, 5) for x in eager[0]]} vs "
                  f"{[round(x, 5) for x in graphed[0]]}  {graphed[3] or ''}")
print("graphs vs eager:", "ALL OK" if not bad else f"{bad} MISMATCH(ES)")
sys.exit(1 if bad else 0)
EOF
check=$?
cat "$OUT/check_graphs.log"
[ $check -eq 0 ] || problems+=("graphs vs eager check: exit $check (see check_graphs.log)")
say "graphs check: exit $check"

# 3. engine img/s at batch 16, with and without graphs
bench() {  # name, cap seconds, overrides...
  local name=$1 limit; limit=$(left "$2"); shift 2
  echo "=== animalcls bench $* ${DATA_ARGS[*]} device=$DEVICE" | tee -a "$OUT/bench.log"
  timeout "$limit" $PY -m animalcls bench "$@" "${DATA_ARGS[@]}" "${TINY[@]}" device="$DEVICE" bench.pil=false \
      bench.cold=false bench.rounds=1 bench.out="$OUT/bench-$name.json" 2>&1 | tee -a "$OUT/bench.log"
  local code=${PIPESTATUS[0]}
  say "bench $name: exit $code" | tee -a "$OUT/bench.log"
  [ "$code" -eq 0 ] || problems+=("bench $name: exit $code")
}
for model in base mobilenet_v3_large; do
  caps=$CAPS_BASE; [ $model = base ] || caps=$CAPS_MNV3
  bench "$model-eager-fp32" 45 model=$model batch_size=16 cuda_graphs=off amp=off $caps
  bench "$model-graphs-fp32" 45 model=$model batch_size=16 cuda_graphs=on amp=off $caps
  bench "$model-graphs-bf16" 45 model=$model batch_size=16 cuda_graphs=on amp=bf16 $caps
done

# 4. loss curves: the same configuration with and without graphs, two seeds
CURVES=/tmp/animalcls-curves
rm -rf "$CURVES"
echo "=== animalcls train -m +paper_config=base-adam-lr1e-3-bs16-e10-ce epochs=$CURVE_EPOCHS cuda_graphs=off,on seed=0,1" \
  | tee "$OUT/curves.log"
timeout "$(left 90)" $PY -m animalcls train -m +paper_config=base-adam-lr1e-3-bs16-e10-ce "${DATA_ARGS[@]}" "${TINY[@]}" \
    device="$DEVICE" epochs=$CURVE_EPOCHS cuda_graphs=off,on seed=0,1 force=true results="$CURVES/results.csv" \
    hydra.sweep.dir="$CURVES" 'hydra.sweep.subdir=${hydra.job.num}_graphs-${cuda_graphs}_seed${seed}' \
    2>&1 | grep -v "^\s*$" | tail -40 | tee -a "$OUT/curves.log"
code=${PIPESTATUS[0]}
say "curves: exit $code" | tee -a "$OUT/curves.log"
[ "$code" -eq 0 ] || problems+=("loss curves: exit $code")
$PY - "$CURVES" "$OUT/curves.csv" <<'EOF'
import sys
from pathlib import Path
import pandas as pd
frames = []
for history in sorted(Path(sys.argv[1]).glob("*/history.csv")):
    _, graphs, seed = history.parent.name.split("_")
    frame = pd.read_csv(history)
    frame.insert(0, "cuda_graphs", graphs.removeprefix("graphs-"))
    frame.insert(1, "seed", int(seed.removeprefix("seed")))
    frames.append(frame)
if frames:
    pd.concat(frames).to_csv(sys.argv[2], index=False)
EOF

# 5. the whole paper at epochs=1, new defaults: packed and unpacked
paper() {  # name, cap seconds, extra overrides...
  local name=$1 limit; limit=$(left "$2"); shift 2
  local dir=/tmp/animalcls-paper-$name
  rm -rf "$dir"
  echo "=== animalcls train -m ${PAPER[*]} ${DATA_ARGS[*]} device=$DEVICE epochs=1 $*" | tee "$OUT/paper-$name.log"
  local start end
  start=$(date +%s.%N)
  timeout -k 15 "$limit" $PY -m animalcls train -m "${PAPER[@]}" "${DATA_ARGS[@]}" device="$DEVICE" epochs=1 "$@" \
      results="$dir/results.csv" hydra.sweep.dir="$dir" 2>&1 | grep -E "results: row|ERROR|Error|error|Traceback" \
      | tail -60 >>"$OUT/paper-$name.log"
  local code=${PIPESTATUS[0]}
  end=$(date +%s.%N)
  cp "$dir/results.csv" "$OUT/paper-$name.csv" 2>/dev/null
  echo "wall_seconds $($PY -c "print(round($end - $start, 1))") exit $code cap $limit" | tee -a "$OUT/paper-$name.log"
  say "paper $name: exit $code" | tee -a "$OUT/paper-$name.log"
  [ "$code" -eq 0 ] || problems+=("whole paper $name: exit $code (124 = cut at its cap of $limit s)")
}
if [ "${MPS:-0}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
  nvidia-cuda-mps-control -d && say "CUDA MPS daemon started" && echo "mps on" >>"$OUT/env.txt"
fi
paper packed 150 hydra/launcher=pack
if [ "${MPS:-0}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
  echo quit | nvidia-cuda-mps-control; say "CUDA MPS daemon stopped"
fi
paper unpacked 240

# 6. old vs new settings, whole runs (only with time to spare)
if [ $((DEADLINE - SECONDS)) -gt 100 ] || [ "$DRY_RUN" = 1 ]; then
  extra=(); [ "$DRY_RUN" = 1 ] && extra=(model=base "${TINY[@]}")
  timeout "$(left 150)" $PY -m animalcls bench bench.mode=sweep "${DATA_ARGS[@]}" "${extra[@]}" device="$DEVICE" \
      epochs=1 bench.rounds=1 bench.out="$OUT/sweep.json" 2>&1 | tail -30 | tee "$OUT/sweep.log"
  code=${PIPESTATUS[0]}
  say "bench sweep: exit $code" | tee -a "$OUT/sweep.log"
  [ "$code" -eq 0 ] || problems+=("bench sweep: exit $code")
else
  say "bench sweep: skipped, $((DEADLINE - SECONDS)) s left" | tee "$OUT/sweep.log"
fi

# 7. summary
{
  if [ ${#problems[@]} -gt 0 ]; then printf 'PROBLEM: %s\n' "${problems[@]}"; else echo "all steps ok"; fi
  echo
  tail -1 "$OUT/check_graphs.log"
  $PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
import pandas as pd
out = Path(sys.argv[1])
print(f"\n{'bench (batch 16)':<32}{'graphs':>7}{'prec':>6}{'limit fp32':>12}{'engine':>10}{'eval':>10}")
engine = {}
for f in sorted(out.glob("bench-*.json")):
    r = json.loads(f.read_text())
    m = r["measurements"]
    engine[f.stem[6:]] = m["engine_warm"]["images_per_s"]
    print(f"{f.stem[6:]:<32}{str(r['cuda_graphs_used']):>7}{r['precision']:>6}{m['limit_fp32']['images_per_s']:>12.0f}"
          f"{m['engine_warm']['images_per_s']:>10.0f}{m['eval']['images_per_s']:>10.0f}")
for model in ("base", "mobilenet_v3_large"):
    eager, graphed = engine.get(f"{model}-eager-fp32"), engine.get(f"{model}-graphs-fp32")
    if eager and graphed:
        print(f"{model}: graphs / eager (fp32) = {graphed / eager:.2f}; graphs bf16 / graphs fp32 = "
              f"{engine.get(f'{model}-graphs-bf16', float('nan')) / graphed:.2f}")
curves = out / "curves.csv"
if curves.exists():
    c = pd.read_csv(curves)
    print("\nloss curves (train loss per epoch; val top-1 of the last epoch):")
    print(c.pivot_table(index=["seed", "cuda_graphs"], columns="epoch", values="train_loss").round(4).to_string())
    last = c[c["epoch"] == c["epoch"].max()].set_index(["seed", "cuda_graphs"])["val_top1"]
    print(last.round(2).to_string())
print()
for name in ("packed", "unpacked"):
    log = out / f"paper-{name}.log"
    if not log.exists():
        continue
    wall = next((l.split() for l in log.read_text().splitlines() if l.startswith("wall_seconds")), None)
    table = pd.read_csv(out / f"paper-{name}.csv") if (out / f"paper-{name}.csv").exists() else pd.DataFrame()
    statuses = table["status"].value_counts().to_dict() if len(table) else {}
    if wall:
        print(f"whole paper, epochs=1, {name:<8}: {float(wall[1]):7.1f} s wall, exit {wall[3]}, {len(table)} rows {statuses}")
sweep = out / "sweep.json"
if sweep.exists():
    s = json.loads(sweep.read_text())
    print(f"\nbench sweep (epochs=1, whole runs): old {s['seconds']['old']:.1f} s, new {s['seconds']['new']:.1f} s, "
          f"old/new {s['ratios']['old_over_new']:.2f}")
    for name, c in s["per_config"].items():
        print(f"  {name:<46} old {c['old_seconds']:6.1f} s  new {c['new_seconds']:6.1f} s  {c['old_over_new']:.2f}  "
              f"{c['precision']['old']} -> {c['precision']['new']}")
EOF
} 2>&1 | tee "$OUT/summary.txt"
say "all done"
[ ${#problems[@]} -eq 0 ]
