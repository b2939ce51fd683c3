"""The CUDA checks, for a machine with a GPU (CI has none): run by hand, prints what it measured.

Usage (in a Python where torch sees a GPU and tbhooks is importable)::

    python benchmarks/cuda_check.py [--steps 2000] [--reps 3] [--out cuda.md]

1. runs the CUDA-marked tests (``pytest -m cuda``): steps that log nothing
   never synchronise with the device (eager, compiled, float16 with a
   GradScaler), and the histogram plugin's logging step reads nothing back on
   the training thread;
2. runs the FSDP2 test's ranks on the GPUs (``tests/_fsdp_child.py``, NCCL,
   one rank per GPU, at most two) and its comparison of the whole-parameter
   histograms with the gathered parameters;
3. times a bare loop against ``tbhooks.Trainer`` with every default (entry
   points loaded, as in ``make bench``'s default row) on two workloads: the
   tutorial's network at batch 4, and torchvision's ResNet-18 at batch 256 on
   32x32 inputs with ``precision="bf16"`` (the bare loop under the same
   autocast).  The data is already on the device.  Each run is timed from a
   synchronisation after step ``--skip`` (past the graph's trace) to one after
   its last step; repetitions interleaved and rotated, after one untimed
   warm-up repetition.

On the GPU the lockstep method of ``make bench`` does not apply (the CPU clock
does not see the device's work): these are separate runs, whose spread the
report shows.  Nothing here is a target of ``make bench``.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision
from torch import nn

import tbhooks

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from rows import tutorial_net  # noqa: E402  (make bench's W1 network)

sys.path.insert(0, str(ROOT / "tests"))
from _fsdp_child import check as check_fsdp  # noqa: E402  (the FSDP2 test's comparison)


def cuda_tests(lines: list[str]) -> int:
    """``pytest -m cuda`` over the whole suite (the library's and the plugins' tests), so that every
    CUDA-marked test runs wherever it is; its exit status."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-rs", "tests", "plugins"]
    print("$", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    print(done.stdout[-6000:], done.stderr[-3000:], sep="\n", flush=True)
    summary = [line for line in done.stdout.splitlines() if "passed" in line or "failed" in line or "error" in line]
    lines.append(f"- `pytest -m cuda`: exit status {done.returncode}; {summary[-1] if summary else 'no summary line'}")
    return done.returncode


def fsdp_on_gpus(lines: list[str]) -> int:
    """The FSDP2 test's ranks on the GPUs, one each (NCCL), and its comparison; 0 when it holds."""
    world = min(2, torch.cuda.device_count())
    with tempfile.TemporaryDirectory(prefix="cuda-fsdp-") as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world)]
        command += [str(ROOT / "tests" / "_fsdp_child.py"), out, "cuda"]
        print("$", " ".join(command[1:]), flush=True)
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        status, why = done.returncode, done.stderr[-3000:]
        if status == 0:
            try:
                check_fsdp(Path(out), world)
            except AssertionError as error:
                status, why = 1, repr(error)
    print(why if status else "FSDP2 on the GPU: the histograms equal the gathered parameters", flush=True)
    lines.append(f"- FSDP2 test on {world} GPU rank(s) (NCCL): " + ("passed" if status == 0 else "**failed**"))
    return status


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Times a run from a synchronisation after step ``skip`` to one after step ``last``; a tbhooks plugin that
    is due only at those two steps, or called by hand from the bare loop."""

    name = "clock"

    def __init__(self, device: torch.device, skip: int, last: int) -> None:
        self.device, self.skip, self.last, self.started, self.seconds = device, skip, last, 0.0, 0.0

    def batch_end_due(self, step: int) -> bool:
        return step in (self.skip, self.last)

    @tbhooks.hookimpl
    def on_batch_end(self, step: int) -> None:
        sync(self.device)
        if step == self.skip:
            self.started = time.perf_counter()
        if step == self.last:
            self.seconds = time.perf_counter() - self.started


class Workload(NamedTuple):
    title: str
    make: Callable[[], nn.Module]
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    precision: str


def workloads(device: torch.device, steps: int, resnet_batch: int) -> list[Workload]:
    """The tutorial's network at batch 4, and ResNet-18 at ``resnet_batch`` in bfloat16 (16 batches reused)."""
    g = torch.Generator().manual_seed(0)
    small = [(torch.randn(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(steps)]
    large = [(torch.randn(resnet_batch, 3, 32, 32, generator=g), torch.randint(0, 10, (resnet_batch,), generator=g))
             for _ in range(16)]  # fmt: skip
    on_device = [[(x.to(device), y.to(device)) for x, y in batches] for batches in (small, large)]
    resnet = functools.partial(torchvision.models.resnet18, num_classes=10)
    return [
        Workload("the tutorial's network, batch 4, 28x28x1", tutorial_net, on_device[0], "32"),
        Workload(f"ResNet-18, batch {resnet_batch}, 32x32x3, bf16", resnet, on_device[1] * (steps // 16), "bf16"),
    ]


def overhead(device: torch.device, w: Workload, skip: int, reps: int, lines: list[str]) -> None:
    """Steps/s of a bare loop and of the Trainer with its defaults, on ``device``; median and range per row."""
    torch.manual_seed(0)
    initial = w.make().state_dict()
    steps = len(w.batches)
    dtype = torch.bfloat16 if w.precision == "bf16" else None

    def model() -> nn.Module:
        net = w.make()
        net.load_state_dict(initial)
        return net.to(device)

    def bare() -> float:
        net, loss_fn, clock = model(), nn.CrossEntropyLoss(), Clock(device, skip, steps)
        opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
        for step, (inputs, labels) in enumerate(w.batches, 1):
            opt.zero_grad()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(net(inputs), labels)
            loss.backward()
            opt.step()
            if clock.batch_end_due(step):
                clock.on_batch_end(step)
        return clock.seconds

    def default() -> float:
        net, clock = model(), Clock(device, skip, steps)
        opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
        with tempfile.TemporaryDirectory(prefix="cuda-run-") as logdir:
            options = {"device": device, "precision": w.precision, "progress": False, "autoload": True}
            trainer = tbhooks.Trainer(net, opt, nn.CrossEntropyLoss(), logdir=logdir, plugins=[clock], **options)
            trainer.fit(w.batches, epochs=1)
        return clock.seconds

    rows: dict[str, Callable[[], float]] = {"bare loop": bare, "tbhooks default": default}
    times: dict[str, list[float]] = {name: [] for name in rows}
    order = list(rows.items())
    for rep in range(reps + 1):  # repetition 0 warms up (kernels, imports) and is dropped
        for name, fn in order[rep % len(order) :] + order[: rep % len(order)]:
            times[name].append(fn())
    rates = {name: [(steps - skip) / t for t in values[1:]] for name, values in times.items()}
    bare_rate = statistics.median(rates["bare loop"])
    lines.append(f"- {w.title}; steps {skip + 1} to {steps} of each run timed:")
    for name, values in rates.items():
        median = statistics.median(values)
        text = (
            f"  - {name}: {median:,.0f} steps/s (range {min(values):,.0f}–{max(values):,.0f}), "
            f"ratio to bare {median / bare_rate:.3f}"
        )
        print(text, flush=True)
        lines.append(text)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps per run (a multiple of 16)")
    parser.add_argument("--skip", type=int, default=20, help="steps before the timing starts (the graph's trace)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each row")
    parser.add_argument("--resnet-batch", type=int, default=256, help="ResNet-18's batch size")
    parser.add_argument("--device", default="cuda", help="cpu only to try the script out; the checks are for cuda")
    parser.add_argument("--out", type=Path, default=None, help="also write the findings to this Markdown file")
    args = parser.parse_args(argv)
    if not 0 < args.skip < args.steps or args.steps % 16:
        parser.error(f"--steps must be a multiple of 16 above --skip, got --steps {args.steps} --skip {args.skip}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    lines = [
        f"# CUDA check ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"- {device_name(device)}; torch {torch.__version__}; Python {platform.python_version()}",
        f"- {args.steps:,} steps a run, {args.reps} timed repetitions",
    ]
    status = cuda_tests(lines) | fsdp_on_gpus(lines) if device.type == "cuda" else 0
    for w in workloads(device, args.steps, args.resnet_batch):
        overhead(device, w, args.skip, args.reps, lines)
    report = "\n".join(lines) + "\n"
    print(report, flush=True)
    if args.out:
        args.out.write_text(report)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
