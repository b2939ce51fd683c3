"""The CUDA checks, for a machine with a GPU (CI has none): run by hand, prints what it measured.

Usage (in a Python where torch sees a GPU and tbhooks is importable)::

    python benchmarks/cuda_check.py [--steps 2000] [--reps 3] [--out cuda.md]

1. runs the CUDA-marked tests (``pytest -m cuda``): steps that log nothing
   never synchronise with the device, and the histogram plugin's logging step
   reads nothing back on the training thread;
2. times the tutorial's network (``make bench``'s W1 network) on the GPU,
   batch 4, the data already on the device: a bare loop against
   ``tbhooks.Trainer`` with every default (entry points loaded, as in
   ``make bench``'s default row), each run ended by a synchronisation,
   repetitions interleaved and rotated, after one untimed warm-up repetition.

On the GPU the lockstep method of ``make bench`` does not apply (the CPU clock
does not see the device's work): these are separate runs, whose spread the
report shows.  Nothing here is a target of ``make bench``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from rows import tutorial_net  # noqa: E402  (make bench's W1 network)

CUDA_TESTS = ["tests/test_cuda_sync.py", "tests/test_plugin_histograms.py"]


def cuda_tests(lines: list[str]) -> int:
    """``pytest -m cuda`` on the test files that hold CUDA tests; its exit status."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-rs", *CUDA_TESTS]
    print("$", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    print(done.stdout[-6000:], done.stderr[-3000:], sep="\n", flush=True)
    summary = [line for line in done.stdout.splitlines() if "passed" in line or "failed" in line or "error" in line]
    lines.append(f"- `pytest -m cuda`: exit status {done.returncode}; {summary[-1] if summary else 'no summary line'}")
    return done.returncode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def overhead(device: torch.device, steps: int, reps: int, lines: list[str]) -> None:
    """Steps/s of a bare loop and of the Trainer with its defaults, on ``device``; median and range per row."""
    import tbhooks

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(steps)]
    batches = [(inputs.to(device), labels.to(device)) for inputs, labels in batches]
    torch.manual_seed(0)
    initial = tutorial_net().state_dict()

    def model() -> nn.Module:
        net = tutorial_net()
        net.load_state_dict(initial)
        return net.to(device)

    def bare() -> None:
        net, loss_fn = model(), nn.CrossEntropyLoss()
        opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
        for inputs, labels in batches:
            opt.zero_grad()
            loss_fn(net(inputs), labels).backward()
            opt.step()
        sync(device)

    def default() -> None:
        net = model()
        opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
        with tempfile.TemporaryDirectory(prefix="cuda-run-") as logdir:
            trainer = tbhooks.Trainer(
                net, opt, nn.CrossEntropyLoss(), logdir=logdir, device=device, progress=False, autoload=True
            )
            trainer.fit(batches, epochs=1)  # fit closes the run: background work and the event file included
            sync(device)

    rows: dict[str, Callable[[], None]] = {"bare loop": bare, "tbhooks default": default}
    times: dict[str, list[float]] = {name: [] for name in rows}
    order = list(rows.items())
    for rep in range(reps + 1):  # repetition 0 warms up (kernels, imports) and is dropped
        for name, fn in order[rep % len(order) :] + order[: rep % len(order)]:
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    rates = {name: [steps / t for t in values[1:]] for name, values in times.items()}
    bare_rate = statistics.median(rates["bare loop"])
    for name, values in rates.items():
        median = statistics.median(values)
        text = (
            f"- {name}: {median:,.0f} steps/s (range {min(values):,.0f}–{max(values):,.0f}), "
            f"ratio to bare {median / bare_rate:.3f}"
        )
        print(text, flush=True)
        lines.append(text)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps per run")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each row")
    parser.add_argument("--device", default="cuda", help="cpu only to try the script out; the checks are for cuda")
    parser.add_argument("--out", type=Path, default=None, help="also write the findings to this Markdown file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    lines = [
        f"# CUDA check ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"- {device_name(device)}; torch {torch.__version__}; Python {platform.python_version()}",
        f"- the tutorial's network, batch 4, {args.steps:,} steps a run, {args.reps} timed repetitions",
    ]
    status = cuda_tests(lines) if device.type == "cuda" else 0
    overhead(device, args.steps, args.reps, lines)
    report = "\n".join(lines) + "\n"
    print(report, flush=True)
    if args.out:
        args.out.write_text(report)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
