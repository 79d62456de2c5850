#!/usr/bin/env bash
# The GPU check of hpsearch (issue 14): what the CPU test suite cannot show, in under 10 minutes.
#
#   benchmarks/gpu_check.sh [OUTDIR]        # OUTDIR defaults to $OUT, else ./gpu-check-<time>
#   GPU_CHECK_DEVICE=cpu benchmarks/gpu_check.sh /tmp/x   # dry run of the script itself, tiny sizes
#   GPU_CHECK_STEPS="env data ddp" benchmarks/gpu_check.sh  # only these steps
#
# Steps (each with its own time limit; the limits add up to 590 s; one failing step does not stop
# the others, and the script exits non-zero if any failed):
#   env         torch, CUDA, GPU, native bf16 (what training.precision: auto picks), nvidia-smi
#   data        the shared CIFAR-10 JPEG archive (../shared/data) extracted to a temporary folder
#   gpu_tests   the GPU-only tests (skipped on the CPU): host-sync-free steps, augmentation on CUDA,
#               resume on CUDA, precision and compile, features and kNN on CUDA; a skip is a failure
#   throughput  trial-loop throughput per registered method on CUDA (ResNet-18, CIFAR stem, 32 px)
#   augment     augmentation throughput on CUDA against the CPU (the SimCLR recipe of
#               benchmarks/augment_throughput.py)
#   resume      a CIFAR-10 study on CUDA sent SIGTERM after its first checkpoint (exit 143), then
#               the same command again: the trial continues from its checkpoint and completes
#   study       a short CIFAR-10 study with ResNet-18 (3 trials), then `hpsearch report`
#   workers     `hpsearch run --workers 2` (issue 13): two worker processes, GPUs assigned
#               round-robin (--trials-per-gpu 2 when there is one GPU), exactly 2 finished trials
#   ddp         one trial on 2 GPUs (training.devices: 2, NCCL), reported, checkpointed once and
#               complete; skipped with a line (not failed) on a machine with one GPU
# Everything lands in OUTDIR: <step>.log for each step, the figures as <step>.json where a step
# measures something, and summary.txt (one line per step: status, seconds, headline figures).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:-${OUT:-$PWD/gpu-check-$(date +%Y%m%d-%H%M%S)}}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
PY="${PYTHON:-python}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
ARCHIVE="${GPU_CHECK_ARCHIVE:-$ROOT/../shared/data/cifar10-jpeg.tar.gz}"
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/hpsearch-gpu-check.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
export HPSEARCH_CACHE="$SCRATCH/cache" PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export GPU_CHECK_DEVICE="$DEVICE" GPU_CHECK_OUT="$OUTDIR" GPU_CHECK_DATA="$SCRATCH/cifar10"
SUMMARY="$OUTDIR/summary.txt"
FAILED=0
cd "$ROOT"

# Sizes: the real check on CUDA; a dry run of the script on the CPU (not a measurement).
# The CPU is slower at anything, so its limits are scaled (LIMIT_SCALE).
if [[ "$DEVICE" == cuda ]]; then
  BACKBONE=resnet18 PRETRAIN=10000 PROBE=1000 EVAL=2000 EPOCHS=4 BATCH=512 TRIALS=3 RESUME_EPOCHS=6 LIMIT_SCALE=1
else
  BACKBONE=small_cnn PRETRAIN=512 PROBE=200 EVAL=200 EPOCHS=2 BATCH=128 TRIALS=2 RESUME_EPOCHS=8 LIMIT_SCALE=4
fi
export BACKBONE PRETRAIN PROBE EVAL EPOCHS BATCH TRIALS RESUME_EPOCHS ROOT OUTDIR PY DEVICE ARCHIVE SCRATCH

{
  echo "hpsearch GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), device $DEVICE, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "results in $OUTDIR"
} > "$SUMMARY"

# run_step NAME LIMIT_S FUNCTION: run FUNCTION in its own shell with its output in NAME.log, killed
# at the time limit (timeout signals the step's whole process group: background runs too), and
# append its outcome and headlines (the log's lines starting with "figure:") to the summary.
run_step() {
  local name="$1" limit=$(( $2 * LIMIT_SCALE )) fn="$3" start rc status
  # GPU_CHECK_STEPS="env data workers" runs only those steps (a rerun of what failed).
  if [[ -n "${GPU_CHECK_STEPS:-}" && " $GPU_CHECK_STEPS " != *" $name "* ]]; then return 0; fi
  start=$(date +%s)
  echo "== $name (limit ${limit}s)"
  set +e
  STEP_LIMIT="$limit" timeout -k 10 "$limit" bash -c "set -euo pipefail; $fn" > "$OUTDIR/$name.log" 2>&1
  rc=$?
  set -e
  if [[ $rc -eq 0 ]]; then status=ok; elif [[ $rc -eq 124 ]]; then status="TIMEOUT (${limit}s)"; else status="FAILED (exit $rc)"; fi
  [[ $rc -eq 0 ]] || FAILED=$((FAILED + 1))
  local headline
  headline="$(grep '^figure:' "$OUTDIR/$name.log" | tail -n 3 | sed 's/^figure: //' | paste -sd ';' - || true)"
  printf '%-11s %-18s %4ss  %s\n' "$name" "$status" "$(( $(date +%s) - start ))" "$headline" >> "$SUMMARY"
  echo "   $status"
}

py() { "$PY" "$@"; }

step_env() {
  py - <<'EOF'
import json, os, platform, torch
device = os.environ["GPU_CHECK_DEVICE"]
info = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                devices=torch.cuda.device_count(), bf16_native=torch.cuda.is_bf16_supported(including_emulation=False),
                cudnn=torch.backends.cudnn.version())
json.dump(info, open(os.path.join(os.environ["GPU_CHECK_OUT"], "env.json"), "w"), indent=1)
print(json.dumps(info, indent=1))
print(f"figure: {info.get('gpu', 'no GPU')}, torch {info['torch']}, bf16 native {info.get('bf16_native')}")
if device == "cuda" and not torch.cuda.is_available():
    raise SystemExit("no CUDA device: nothing here can be checked (GPU_CHECK_DEVICE=cpu is a dry run)")
EOF
  if command -v nvidia-smi > /dev/null; then nvidia-smi || true; fi
}

step_data() {
  [[ -f "$ARCHIVE" ]] || { echo "missing $ARCHIVE (the shared CIFAR-10 JPEG archive)"; return 1; }
  tar -xzf "$ARCHIVE" -C "$SCRATCH"
  # An ImageFolder as hpsearch reads it (README, Data): root/train/<class>/*, root/test/<class>/*.
  ls "$GPU_CHECK_DATA/train" "$GPU_CHECK_DATA/test" > /dev/null
  echo "figure: $(find "$GPU_CHECK_DATA/train" -name '*.jpg' | wc -l) train, $(find "$GPU_CHECK_DATA/test" -name '*.jpg' | wc -l) test images"
}

step_gpu_tests() {
  local rc=0
  py -m pytest -q -rs -p no:cacheprovider -k "cuda or gpu" --junitxml="$OUTDIR/gpu_tests.xml" \
    tests/augment/test_augment.py tests/training/test_host_sync.py tests/training/test_pretrain_device.py \
    tests/evaluation/test_memory.py || rc=$?
  echo "figure: $(grep -o 'tests="[0-9]*"' "$OUTDIR/gpu_tests.xml" | head -1) $(grep -o 'failures="[0-9]*"' "$OUTDIR/gpu_tests.xml" | head -1) $(grep -o 'skipped="[0-9]*"' "$OUTDIR/gpu_tests.xml" | head -1)"
  [[ $rc -eq 0 ]] || return "$rc"
  if [[ "$DEVICE" == cuda ]] && grep -q 'skipped="[1-9]' "$OUTDIR/gpu_tests.xml"; then
    echo "GPU-only tests were skipped on a CUDA machine"; return 1
  fi
}

step_throughput() {
  py - <<'EOF'
"""Trial-loop throughput per method: Pretraining.train_epoch on the device, images already there."""
import json, os, statistics, sys, time
sys.path.insert(0, "benchmarks")
import torch
from _common import load_cifar10
from trial_throughput import in_memory_splits, study
from hpsearch.study.studyfile import load_study
from hpsearch.training.pretrain import Pretraining
from objectives import METHODS

device = torch.device(os.environ["GPU_CHECK_DEVICE"])
cuda = device.type == "cuda"
batch, steps, rounds = (256, 20, 3) if cuda else (16, 2, 1)
images, labels = load_cifar10("train", per_class=batch * steps // 10) if cuda else load_cifar10("test", per_class=4)
images, labels = images[:batch * steps], labels[:batch * steps]
splits = in_memory_splits(images, labels).to(device)
results = {}
for name in sorted(METHODS) if cuda else ["simclr", "rotation"]:
    spec = study(name, 16, batch, rounds + 1, 32)
    spec["model"] = {"backbone": os.environ["BACKBONE"], "width": 16}
    cfg, _ = load_study(spec)
    session = Pretraining(cfg, splits, device, seed=0)
    session.train_epoch()  # warm-up: cuDNN autotuning, pinned-memory pool
    rates = []
    for _ in range(rounds):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        stats = session.train_epoch()  # ends with one host sync (the epoch's loss)
        rates.append(session.steps_per_epoch * session.batch_size / (time.perf_counter() - start))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    results[name] = {"images_per_s": statistics.median(rates), "loss": stats.ssl_loss, "bf16": session.autocast,
                     "peak_mib": peak}
    print(f"{name:13s} {statistics.median(rates):10,.0f} img/s  loss {stats.ssl_loss:.4f}  bf16 {session.autocast}"
          f"  peak {peak or 0:,.0f} MiB", flush=True)
    del session
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
json.dump(results, open(os.path.join(os.environ["GPU_CHECK_OUT"], "throughput.json"), "w"), indent=1)
slowest = min(results, key=lambda m: results[m]["images_per_s"])
print(f"figure: {os.environ['BACKBONE']} batch {batch}: median {statistics.median(r['images_per_s'] for r in results.values()):,.0f} img/s, "
      f"slowest {slowest} {results[slowest]['images_per_s']:,.0f}")
EOF
}

step_augment() {
  py - <<'EOF'
"""Augmentation throughput: random_views (SimCLR recipe, 2 views at 32 px) on the device vs the CPU."""
import json, os, statistics, sys, time
sys.path.insert(0, "benchmarks")
import torch
from _common import load_cifar10
from augment_throughput import RECIPE
from hpsearch.augment import random_views

device = torch.device(os.environ["GPU_CHECK_DEVICE"])
cuda = device.type == "cuda"
images, _ = load_cifar10("train", per_class=500) if cuda else load_cifar10("test", per_class=26)
batch = 512 if cuda else 64


def epoch(x, generator):
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        views = random_views(x[i:i + batch], RECIPE, 32, generator, 2)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    assert views[0].device == x.device
    return len(x) / (time.perf_counter() - start)


results = {}
for where, x, rounds in (("cpu", images, 1), (str(device), images.to(device), 5 if cuda else 1)):
    generator = torch.Generator().manual_seed(0)
    epoch(x, generator)  # warm-up
    results[where] = statistics.median(epoch(x, generator) for _ in range(rounds))
    print(f"{where}: {results[where]:,.0f} unique images/s, 2 views each, batch {batch}", flush=True)
json.dump(results, open(os.path.join(os.environ["GPU_CHECK_OUT"], "augment.json"), "w"), indent=1)
print(f"figure: augment {results[str(device)]:,.0f} img/s on {device} ({results[str(device)] / results['cpu']:.1f}x the CPU)")
EOF
}

# A study file on the extracted CIFAR-10 ImageFolder: study_file PATH NAME TRIALS EPOCHS
study_file() {
  cat > "$1" <<EOF
name: $2
seed: 0
n_trials: $3
workdir: $SCRATCH/runs-$2
data: {dataset: imagefolder, root: $GPU_CHECK_DATA, image_size: 32, probe_size: $PROBE, eval_size: $EVAL, pretrain_size: $PRETRAIN}
model: {backbone: $BACKBONE, width: 16}
objective: {method: simclr}
training: {epochs: $4, batch_size: $BATCH, device: $DEVICE, optimizer: {name: lars, lr: 0.4, weight_decay: 0.0001}}
evaluation: {eval_every: 1, linear_probe: {steps: 300}}
search_space:
  training.optimizer.lr: {type: float, low: 0.1, high: 1.0, log: true}
  objective.temperature: {type: float, low: 0.1, high: 0.5, log: true}
sampler: {name: random}
pruning: {name: none}
EOF
}

step_resume() {
  local file="$OUTDIR/resume.yaml" rc=0 pid waited=0
  study_file "$file" resume 1 "$RESUME_EPOCHS"
  "$PY" -m hpsearch run "$file" > "$OUTDIR/resume-first.log" 2>&1 &
  pid=$!
  # SIGTERM (pre-emption) once the first checkpoint is written, i.e. inside epoch 2.
  until compgen -G "$SCRATCH/runs-resume/checkpoints/resume/trial-0/epoch*.pt" > /dev/null; do
    if ! kill -0 "$pid" 2> /dev/null; then echo "the run ended before its first checkpoint"; cat "$OUTDIR/resume-first.log"; return 1; fi
    if (( waited > STEP_LIMIT * 5 / 2 )); then echo "no checkpoint in time"; kill -KILL "$pid"; return 124; fi
    sleep 0.2; waited=$((waited + 1))
  done
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  cat "$OUTDIR/resume-first.log"
  [[ $rc -eq 143 ]] || { echo "expected exit 143 after SIGTERM, got $rc"; return 1; }
  py -m hpsearch run "$file" > "$OUTDIR/resume-second.log" 2>&1 || { cat "$OUTDIR/resume-second.log"; return 1; }
  cat "$OUTDIR/resume-second.log"
  grep -q "continuing trial 0 from its checkpoint" "$OUTDIR/resume-second.log" || { echo "the trial did not continue from its checkpoint"; return 1; }
  py - "$SCRATCH/runs-resume/optuna.db" <<'EOF'
import sys, optuna
study = optuna.load_study(study_name="resume", storage=f"sqlite:///{sys.argv[1]}")
states = [t.state.name for t in study.trials]
print("trial states:", states, "values:", [t.value for t in study.trials])
assert states[-1] == "COMPLETE" and "RUNNING" not in states, states
print(f"figure: SIGTERM -> exit 143 -> continued from checkpoint -> {states[-1]} value {study.trials[-1].value:.4f}")
EOF
}

step_study() {
  local file="$OUTDIR/study.yaml"
  study_file "$file" cifar10-gpu-check "$TRIALS" "$EPOCHS"
  py -m hpsearch run "$file"
  py -m hpsearch report cifar10-gpu-check --workdir "$SCRATCH/runs-cifar10-gpu-check" > "$OUTDIR/study-report.txt" 2>&1 || true
  cat "$OUTDIR/study-report.txt"
  py - "$SCRATCH/runs-cifar10-gpu-check/optuna.db" <<'EOF'
import json, os, sys, optuna
study = optuna.load_study(study_name="cifar10-gpu-check", storage=f"sqlite:///{sys.argv[1]}")
trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
           "seconds": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None}
          for t in study.trials]
json.dump(trials, open(os.path.join(os.environ["GPU_CHECK_OUT"], "study.json"), "w"), indent=1)
done = [t for t in trials if t["state"] == "COMPLETE"]
assert done, trials
best = max(done, key=lambda t: t["value"])
print(f"figure: {len(done)}/{len(trials)} trials complete, best value {best['value']:.4f} (trial {best['number']}), "
      f"{sum(t['seconds'] or 0 for t in trials) / len(trials):.0f} s per trial")
EOF
}

step_workers() {
  local file="$OUTDIR/workers.yaml" gpus per_gpu=1
  study_file "$file" workers 2 "$EPOCHS"
  gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
  [[ "$gpus" -ge 2 ]] || per_gpu=2
  py -m hpsearch run "$file" --workers 2 --trials-per-gpu "$per_gpu" | tee "$OUTDIR/workers-run.log"
  py - "$SCRATCH/runs-workers/optuna.db" "$gpus" <<'EOF'
import sys, optuna
study = optuna.load_study(study_name="workers", storage=f"sqlite:///{sys.argv[1]}")
finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED") and not t.user_attrs.get("surplus")]
workers = {t.user_attrs["worker"]["pid"] for t in finished}
assert len(finished) == 2, [(t.number, t.state.name) for t in study.trials]
print(f"figure: --workers 2 on {sys.argv[2]} GPU(s): {len(finished)} trials finished by {len(workers)} worker process(es)")
EOF
}

step_ddp() {
  local file="$OUTDIR/ddp.yaml" gpus
  gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
  if [[ "$DEVICE" == cuda && "$gpus" -lt 2 ]]; then
    echo "figure: skipped: a DDP trial needs 2 GPUs, this machine has $gpus"; return 0
  fi
  study_file "$file" ddp 1 "$EPOCHS"
  sed -i 's/^training: {/training: {devices: 2, /' "$file"
  py -m hpsearch run "$file" | tee "$OUTDIR/ddp-run.log"
  py - "$SCRATCH/runs-ddp/optuna.db" <<'EOF'
import sys, optuna
study = optuna.load_study(study_name="ddp", storage=f"sqlite:///{sys.argv[1]}")
trial = study.trials[-1]
assert trial.state.name == "COMPLETE", trial.state
assert len(trial.intermediate_values) >= 1, trial.intermediate_values
print(f"figure: DDP trial on 2 ranks: {trial.state.name}, value {trial.value:.4f}, {len(trial.intermediate_values)} reports")
EOF
}

export -f py step_env step_data step_gpu_tests step_throughput step_augment study_file step_resume step_study step_workers step_ddp
start=$(date +%s)
run_step env 15 step_env
if [[ $FAILED -gt 0 ]]; then echo "stopping: no usable device" | tee -a "$SUMMARY"; exit 1; fi
run_step data 30 step_data
run_step gpu_tests 110 step_gpu_tests
run_step throughput 60 step_throughput
run_step augment 30 step_augment
run_step resume 90 step_resume
run_step study 135 step_study
run_step workers 60 step_workers
run_step ddp 60 step_ddp
echo "total $(( $(date +%s) - start ))s, $FAILED step(s) failed" >> "$SUMMARY"
cat "$SUMMARY"
[[ $FAILED -eq 0 ]]
