"""Peak memory of a training step per method and batch size, and where batch-squared contrastive logits cap it.

    python benchmarks/peak_memory.py                   # every method, batch 256 / 512 / 1024, 3 steps, 32 px, width 32
    python benchmarks/peak_memory.py --batches 256 2048 --methods simclr moco --json /tmp/peak_memory.json
    python benchmarks/peak_memory.py --quick           # tiny sizes: checks the script runs, measures nothing

Each (method, batch) runs in a fresh Python process (ru_maxrss is a high-water mark: peaks must not
carry over), which builds the trial's `hpsearch.training.pretrain.Pretraining` from a validated StudyConfig --
small_cnn, the method's heads and defaults, SGD, the study's default augmentation -- on random uint8
images (steps x batch of them: one epoch is --steps optimiser steps) and trains that epoch. It reports:
- baseline: the process's peak RSS after building the model, optimiser and data, before training
  (imports, torch's allocator and the images included);
- peak: the peak RSS after training (ru_maxrss); peak - baseline is what training added;
- on CUDA (training.device auto picks it), also torch.cuda.max_memory_allocated during training and
  memory_allocated before it (the CUDA context is in RSS, not in these).

Then the batch-squared term: SimCLR's NT-Xent builds a 2B x 2B float32 similarity matrix
(16 B^2 bytes). A separate fresh process runs nt_xent alone, forward and backward, at two large
batches and reports how many such matrices are live at its peak, which turns 16 B^2 into the batch at
which the logits alone fill the machine's memory. (MoCo's logits here are B x (1 + queue) per view,
linear in B at a fixed queue; DINO's are views x B x out_dim: neither grows as B^2.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from _common import machine, table  # noqa: E402

MB = 2**20


def peak_rss() -> int:
    """This process's peak resident set size, bytes (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_train(method: str, batch: int, args) -> dict:
    """In a fresh process: build Pretraining for `method` at `batch`, train `args.steps` steps, report memory."""
    import torch

    from hpsearch.data import Splits
    from hpsearch.training.pretrain import Pretraining, resolve_device
    from hpsearch.study.studyfile import load_study

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    size = args.image_size
    images = torch.randint(0, 256, (batch * args.steps, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (len(images),), generator=g)
    # Probe/eval are a slice of the same images (not used: nothing is evaluated).
    splits = Splits(pretrain=images, probe_images=images[:100], probe_labels=labels[:100], val_images=images[:100],
                    val_labels=labels[:100], test_images=images[:100], test_labels=labels[:100],
                    mean=torch.full((3,), 0.5), std=torch.full((3,), 0.29)).to(device)
    cfg, _ = load_study({
        "name": f"peak-memory-{method}",
        "data": {"dataset": "cifar10", "root": "in-memory", "image_size": size},  # only has to validate
        "model": {"backbone": "small_cnn", "width": args.width},
        "objective": {"method": method},
        # lr does not change memory; 0.05 keeps every method finite (VICReg is NaN at SGD 0.3).
        "training": {"epochs": 1, "batch_size": batch, "device": args.device,
                     "optimizer": {"name": "sgd", "lr": 0.05}},
        "search_space": {"objective.method": {"type": "categorical", "choices": [method]}},
    })
    session = Pretraining(cfg, splits, device, seed=0)
    assert session.steps_per_epoch == args.steps and session.batch_size == batch
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
        cuda_before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    baseline, baseline_now = peak_rss(), current_rss()
    start = time.perf_counter()
    stats = session.train_epoch()
    if on_cuda:
        torch.cuda.synchronize()
    result = {"method": method, "batch": batch, "device": str(device), "baseline_rss": baseline,
              "baseline_current_rss": baseline_now, "peak_rss": peak_rss(), "loss": stats.ssl_loss,
              "step_s": (time.perf_counter() - start) / args.steps,
              "params": sum(p.numel() for p in session.method.parameters())}
    if on_cuda:
        result.update(cuda_allocated_before=cuda_before, cuda_max_allocated=torch.cuda.max_memory_allocated(),
                      cuda_device=torch.cuda.get_device_name(device))
    return result


def child_logits(batches: list[int], dim: int) -> dict:
    """In a fresh process: NT-Xent alone, forward + backward, at each batch (increasing), on the CPU.

    Returns per batch the peak RSS added over the previous high-water mark, and that in units of one
    2B x 2B float32 matrix (16 B^2 bytes): how many of them are live at the loss's peak.
    """
    import torch

    from objectives.simclr import nt_xent

    out = []
    for b in batches:
        z1 = torch.randn(b, dim, requires_grad=True)
        z2 = torch.randn(b, dim, requires_grad=True)
        high_water, current = peak_rss(), current_rss()
        nt_xent(z1, z2, 0.2).backward()
        peak = peak_rss()
        matrix = (2 * b) ** 2 * 4
        # Only a new high-water mark measures this call (ru_maxrss never goes down).
        added = peak - current if peak > high_water else None
        out.append({"batch": b, "matrix_bytes": matrix, "added_rss": added,
                    "matrices_live": None if added is None else added / matrix})
        del z1, z2
    return {"logits": out}


def run_child(argv: list[str], timeout: float) -> dict:
    """Run this script in child mode in a fresh interpreter; its last stdout line is the JSON result."""
    try:
        done = subprocess.run([sys.executable, str(HERE), *argv], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        killed = done.returncode < 0 and -done.returncode == 9
        why = "killed (SIGKILL: out of memory?)" if killed else (done.stderr.strip().splitlines() or ["?"])[-1][:100]
        return {"error": f"exit {done.returncode}: {why}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def mb(value: float) -> str:
    return f"{value / MB:,.0f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    parser.add_argument("--batches", nargs="*", type=int, default=[256, 512, 1024])
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps trained in each process")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="small_cnn width")
    parser.add_argument("--device", default="auto", help="training.device: auto = CUDA when present")
    parser.add_argument("--threads", type=int, help="torch intra-op threads in the children (default: torch's)")
    parser.add_argument("--logits-batches", nargs="*", type=int, default=[2048, 4096],
                        help="batches of the NT-Xent-alone measurement (increasing; 4096 needs ~1.3 GB)")
    parser.add_argument("--memory-gib", type=float,
                        help="memory to state the ceiling for (default: this machine's MemAvailable, and 80 GiB)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per child process")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs, measures nothing")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--child-logits", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.steps, args.image_size, args.width = [8, 16], 1, 16, 4
        args.logits_batches, args.methods = [64, 128], args.methods or ["simclr", "byol"]
        args.threads = args.threads or 1
    if args.child:
        print(json.dumps(child_train(args.child[0], int(args.child[1]), args)))
        return
    if args.child_logits:
        print(json.dumps(child_logits(args.logits_batches, 128)))
        return

    from objectives import METHODS  # the parent never imports torch's training stack itself

    methods = args.methods or sorted(METHODS)
    common = ["--steps", str(args.steps), "--image-size", str(args.image_size), "--width", str(args.width),
              "--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
    print(machine())
    print(f"{args.image_size} px, small_cnn width {args.width}, {args.steps} steps per process, device {args.device}; "
          f"batches {args.batches}; methods: {', '.join(methods)}", flush=True)
    results: dict[str, dict[int, dict]] = {}
    for method in methods:
        results[method] = {}
        for batch in args.batches:
            r = run_child(["--child", method, str(batch), *common], args.timeout)
            results[method][batch] = r
            what = r.get("error") or (f"baseline {mb(r['baseline_rss'])} MB, peak {mb(r['peak_rss'])} MB, "
                                      f"{r['step_s']:.2f} s/step")
            print(f"  {method} batch {batch}: {what}", flush=True)

    def cell(r: dict, peak: str, base: str) -> str:
        return "error" if "error" in r else f"{mb(r[peak])} (+{mb(r[peak] - r[base])})"

    print()
    print(machine())
    print(f"Peak RSS, MB (+ increment over the baseline: after building the model, before training), "
          f"{args.steps} steps at {args.image_size} px, small_cnn width {args.width}:")
    header = ["method", "baseline MB"] + [f"batch {b}" for b in args.batches]
    rows = []
    for method, by_batch in results.items():
        bases = [r["baseline_rss"] for r in by_batch.values() if "error" not in r]
        base = "-" if not bases else (mb(min(bases)) if mb(min(bases)) == mb(max(bases))
                                      else f"{mb(min(bases))}-{mb(max(bases))}")
        rows.append([method, base] + [cell(by_batch[b], "peak_rss", "baseline_rss") for b in args.batches])
    print(table(header, rows))
    errors = [f"{m} batch {b}: {r['error']}" for m, d in results.items() for b, r in d.items() if "error" in r]
    for line in errors:
        print(f"  {line}")
    if any("cuda_max_allocated" in r for d in results.values() for r in d.values()):
        device = next(r["cuda_device"] for d in results.values() for r in d.values() if "cuda_device" in r)
        print(f"\nCUDA max allocated during training, MB (+ over allocated before training), {device}:")
        print(table(["method"] + [f"batch {b}" for b in args.batches],
                    [[m] + [cell(d[b], "cuda_max_allocated", "cuda_allocated_before") if "cuda_max_allocated" in d[b]
                            else "error" for b in args.batches] for m, d in results.items()]))

    # The batch-squared term and its ceiling.
    logits = run_child(["--child-logits", "--logits-batches", *map(str, args.logits_batches)], args.timeout)
    print("\nSimCLR NT-Xent: one 2B x 2B float32 similarity matrix is 16 B^2 bytes: "
          + ", ".join(f"B={b}: {16 * b * b / MB:,.0f} MB" for b in args.batches) + ".")
    if "error" in logits:
        print(f"  NT-Xent alone: {logits['error']}")
        copies = None
    else:
        for entry in logits["logits"]:
            if entry["added_rss"] is None:
                print(f"  NT-Xent alone, B={entry['batch']}: below the process's earlier peak, not measured")
                continue
            print(f"  NT-Xent alone, forward + backward, B={entry['batch']} (D=128): peak +{mb(entry['added_rss'])} MB "
                  f"= {entry['matrices_live']:.1f} matrices of {mb(entry['matrix_bytes'])} MB live at once")
        copies = logits["logits"][-1]["matrices_live"]
    available = args.memory_gib * 2**30 if args.memory_gib else _mem_available()
    k = copies or 4.0
    ceilings = {"this machine's available memory": available, "an 80 GiB GPU": 80 * 2**30}
    for name, memory in ceilings.items():
        if memory:
            print(f"  logits alone fill {name} ({memory / 2**30:.1f} GiB) at B = sqrt(M / ({k:.1f} x 16 bytes)) "
                  f"= {int((memory / (16 * k)) ** 0.5):,}")
    linear = _linear_ceiling(results.get("simclr", {}), available, k)
    if linear:
        print(f"  SimCLR here, batch {linear['b0']} -> {linear['b1']}: "
              f"{linear['per_image'] / 2**10:,.0f} KiB per image grows linearly (activations, views); "
              f"the B^2 logits are {linear['b2_share']:.0%} of the increment at B={linear['b1']}. "
              f"Linear + B^2 fill {available / 2**30:.1f} GiB at about B = {linear['ceiling']:,}, "
              f"where the logits are {linear['b2_at_ceiling']:.0%} of it; the B^2 term overtakes the linear one "
              f"only at B = {linear['per_image'] / (16 * k):,.0f}.")
    print("  MoCo's logits: B x (1 + queue) per view (queue 4096 by default): linear in B; "
          "DINO's: views x B x out_dim: linear in B.")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {key: value for key, value in vars(args).items() if key not in ("json", "child", "child_logits")}
        args.json.write_text(json.dumps({"machine": machine(), "settings": settings, "results": results,
                                         "logits": logits}, indent=2))
        print(f"wrote {args.json}")
    if not rows or all("error" in r for d in results.values() for r in d.values()):
        raise SystemExit("no method could be measured")


def _mem_available() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _linear_ceiling(by_batch: dict[int, dict], memory: float | None, k: float) -> dict | None:
    """From the two largest measured batches: RSS per image, the B^2 share of the largest step, and the
    batch at which base + per_image * B + 16 k B^2 reaches `memory`."""
    ok = sorted(b for b, r in by_batch.items() if "error" not in r)
    if len(ok) < 2 or not memory:
        return None
    b0, b1 = ok[-2], ok[-1]
    p0, p1 = by_batch[b0]["peak_rss"], by_batch[b1]["peak_rss"]
    quad = 16 * k  # bytes per B^2: k live 2B x 2B float32 matrices
    per_image = (p1 - p0 - quad * (b1 * b1 - b0 * b0)) / (b1 - b0)  # the linear part (activations, views)
    base = p1 - per_image * b1 - quad * b1 * b1
    # base + per_image B + quad B^2 = memory
    disc = per_image ** 2 - 4 * quad * (base - memory)
    ceiling = int((-per_image + disc ** 0.5) / (2 * quad))
    b2_share = quad * b1 * b1 / max(1, p1 - by_batch[b1]["baseline_rss"])
    return {"b0": b0, "b1": b1, "per_image": per_image, "ceiling": ceiling, "b2_share": b2_share,
            "b2_at_ceiling": quad * ceiling * ceiling / memory}

if __name__ == "__main__":
    main()
