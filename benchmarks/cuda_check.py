"""The CUDA checks, for a machine with a GPU (CI has none): run by hand, prints what it measured.

Usage (in a Python where torch sees a GPU and tbhooks is importable)::

    python benchmarks/cuda_check.py [--steps 2000] [--reps 3] [--out cuda.md]

It does three things and prints each as it goes:

1. runs the CUDA-marked tests (``pytest -m cuda``): steps that log nothing
   raise nowhere under ``torch.cuda.set_sync_debug_mode("error")``, and the
   histogram plugin's logging step reads nothing back on the training thread;
2. times the histogram of one 20M-element CUDA tensor: tbhooks' device-side
   bins + ``add_histogram_raw`` against ``SummaryWriter.add_histogram`` (which
   copies the tensor to the host and bins it with numpy): ``make bench``'s
   histogram microbenchmark, best of 5, each timing ended by a
   ``torch.cuda.synchronize()``;
3. runs the tutorial's network on the GPU, batch size 4, data already on the
   device: a bare hand-written loop against ``tbhooks.Trainer`` with the
   default plugins, interleaved repetitions, steps/s and the ratio of medians.

Nothing here is a target of ``make bench``, whose workload is the CPU one of
the issue; this is where the GPU figures in the notes come from.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import Config, Net, histograms  # noqa: E402  (make bench's network and histogram timing)


def cuda_tests(lines: list[str]) -> int:
    """``pytest -m cuda`` on the test files that hold CUDA tests; its exit status."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-rs"]
    command += ["tests/test_cuda_sync.py", "tests/test_plugin_histograms.py"]
    print("$", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    print(done.stdout[-6000:], done.stderr[-3000:], sep="\n", flush=True)
    summary = [line for line in done.stdout.splitlines() if "passed" in line or "failed" in line or "error" in line]
    lines.append(f"- `pytest -m cuda`: exit status {done.returncode}; {summary[-1] if summary else 'no summary line'}")
    return done.returncode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def histogram_times(device: torch.device, elements: int, repeat: int, lines: list[str]) -> None:
    """``make bench``'s histogram microbenchmark (:func:`run.histograms`), on ``device``."""
    with tempfile.TemporaryDirectory(prefix="cuda-hist-") as root:
        best = histograms(Config(hist_elements=elements, hist_repeat=repeat), Path(root), device=str(device))
    print(f"histogram of {elements:,} values on {device}, best of {repeat}: {best}", flush=True)
    row = ""
    if "row_ms" in best:  # on CUDA only
        row = f"; the device-side bins alone (`histogram_row`, no read-back) {best['row_ms']:.3f} ms"
    lines.append(
        f"- histogram of {elements:,} float32 values on {device_name(device)}, best of {repeat}: "
        f"`add_histogram` {best['theirs_ms']:.2f} ms; tbhooks bins + `add_histogram_raw` {best['ours_ms']:.2f} ms "
        f"({best['speedup']:.1f}x){row}"
    )


def overhead(device: torch.device, steps: int, reps: int, lines: list[str], attribute: bool = False) -> None:
    import tbhooks
    from tbhooks.manager import BUILTIN_PLUGINS

    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(4, 1, 28, 28, generator=generator).to(device),
            torch.randint(0, 10, (4,), generator=generator).to(device),
        )
        for _ in range(steps)
    ]
    torch.manual_seed(0)
    initial = Net().state_dict()

    def model() -> Net:
        net = Net()
        net.load_state_dict(initial)
        return net.to(device)

    def bare() -> None:
        net = model()
        opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        for inputs, labels in batches:
            opt.zero_grad()
            loss_fn(net(inputs), labels).backward()
            opt.step()
        sync(device)

    seen: dict[str, list[float]] = {}  # plugin -> ms per run, from the measured row's own scalars

    def fit(**options: object) -> None:
        net = model()
        opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
        with tempfile.TemporaryDirectory(prefix="cuda-run-") as logdir:
            trainer = tbhooks.Trainer(
                net, opt, nn.CrossEntropyLoss(), logdir=logdir, device=device, progress=False, **options
            )
            trainer.fit(batches, epochs=1)  # fit closes the run: background work and the event file included
            sync(device)
            if options.get("measure_overhead"):
                from tbhooks.testing import read_events

                for tag, points in read_events(Path(logdir)).scalars.items():
                    if tag.startswith("tbhooks/overhead_ms/"):
                        seen.setdefault(tag.rsplit("/", 1)[1], []).extend(p.value * steps for p in points)

    def default() -> None:
        fit(autoload=False)  # the built-in plugins at their defaults, as make bench's default row

    def core() -> None:
        fit(autoload=False, disable=list(BUILTIN_PLUGINS))  # the Trainer and its events, no plugin

    def measured() -> None:
        fit(autoload=False, measure_overhead=True)  # where the default row's time goes, plugin by plugin

    rows = {"bare loop": bare, "tbhooks, no plugins": core, "tbhooks default": default}
    if attribute:
        rows["tbhooks default + measure_overhead"] = measured
    times: dict[str, list[float]] = {name: [] for name in rows}
    for rep in range(reps + 1):  # repetition 0 warms up (cuDNN, kernels, imports) and is dropped
        order = list(rows.items())
        for name, fn in order[rep % len(order) :] + order[: rep % len(order)]:  # rotated each repetition
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
    if seen:
        extra = steps / statistics.median(rates["tbhooks default"]) - steps / bare_rate
        parts = ", ".join(
            f"{name} {statistics.median(v):.1f}"
            for name, v in sorted(seen.items(), key=lambda kv: -statistics.median(kv[1]))
        )
        text = (
            f"- where the default row's time goes, in ms per run of {steps:,} steps, as tbhooks measures itself "
            f"(`measure_overhead=True`: each plugin's hook calls in the epoch, syncs they force included; "
            f"median of the timed runs): {parts}; "
            f"the default row took {extra * 1e3:.0f} ms a run more than the bare loop"
        )
        print(text, flush=True)
        lines.append(text)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per run of the overhead rows")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each row")
    parser.add_argument("--elements", type=int, default=20_000_000, help="values in the histogram's tensor")
    parser.add_argument("--device", default="cuda", help="cpu only to try the script out; the checks are for cuda")
    parser.add_argument(
        "--attribute",
        action="store_true",
        help="also time the default row with measure_overhead=True, plugin by plugin",
    )
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
    ]
    status = cuda_tests(lines) if device.type == "cuda" else 0
    histogram_times(device, args.elements, 5, lines)
    overhead(device, args.steps, args.reps, lines, attribute=args.attribute)
    report = "\n".join(lines) + "\n"
    print(report, flush=True)
    if args.out:
        args.out.write_text(report)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
