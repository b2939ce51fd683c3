#!/usr/bin/env python
"""tbhooks' benchmark (``make bench``): what logging costs next to a bare loop, the tutorial's code and the peers.

Prints every table as it goes, writes ``benchmarks/RESULTS.md`` (``--out``: elsewhere) and quotes its tables in
README.md; ``--quick`` is a tiny configuration for the smoke test (numbers meaningless).  Measured in lockstep:
each row (what it trains is in ``benchmarks/rows.py``) trains through a :class:`Lockstep` loader that runs one
step of a bare loop on its own copy of the network before handing over each batch, so both share whatever the
machine does meanwhile; a row's ratio is the bare steps' time over the row's own time in the steady state, and
the control (the bare loop against itself) measures the method's own cost, taken out of every row.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import tbhooks

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # rows.py beside this file, however this file is loaded (make bench, the smoke test)

from rows import (  # noqa: E402
    CONTROL,
    DEFAULT_SCHEDULE,
    PLUGINS,
    Sizes,
    Workload,
    bare_loop,
    ignite,
    ignite_bare,
    ignite_tbhooks,
    lightning,
    lightning_bare,
    lightning_tbhooks,
    make_workload,
    plain_writer,
    tbhooks_default,
    tbhooks_every,
    tutorial,
)


@dataclass(frozen=True)
class Row:
    """A line of each workload's table.  ``fn`` trains the workload (rows with the same function share its
    runs); the ratio is to the row named ``base``; ``targets`` maps a workload to the lowest ratio that meets
    the row's target there; ``needs``: a module that must be installed, else the row is skipped."""

    name: str
    fn: Callable[[Workload], None]
    targets: Mapping[str, float] = field(default_factory=dict)
    base: str = CONTROL
    needs: str | None = None


ROWS = [
    Row(CONTROL, bare_loop),
    Row("tbhooks default", tbhooks_default, {"W1": 0.96, "W2": 0.99}),
    Row("tbhooks default, relative to plain SummaryWriter", tbhooks_default, {"W1": 0.99}, "plain SummaryWriter"),
    Row("tbhooks, every plugin", tbhooks_every, {"W1": 0.94, "W2": 0.98}),
    Row("plain SummaryWriter", plain_writer),
    Row("the tutorial's code", tutorial),
    Row("Lightning, no logger", lightning_bare, needs="pytorch_lightning"),
    Row("Lightning + TensorBoardLogger", lightning, base="Lightning, no logger", needs="pytorch_lightning"),
    Row("Lightning + tbhooks callback", lightning_tbhooks, {"W2": 0.99}, "Lightning, no logger", "pytorch_lightning"),
    Row("Ignite, no logger", ignite_bare, needs="ignite"),
    Row("Ignite + TensorboardLogger", ignite, base="Ignite, no logger", needs="ignite"),
    Row("Ignite + tbhooks", ignite_tbhooks, {"W2": 0.99}, "Ignite, no logger", "ignite"),
]


class Lockstep:
    """A row's training loader that runs one step of a bare loop before handing over each batch.

    A bare step's time is the thread's CPU time plus its run delay (runnable, waiting for a core: Linux's
    schedstat; without it CPU time alone): a core taken by another process stretches bare and row steps alike,
    while time the thread sleeps (for the GIL held by a row's background thread, say) is charged to the row.
    The steady state is the stretch from the bare step before batch ``skip`` to the row's last step: what set-up,
    the first steps (the graph's trace, say) and the close cost is reported apart, as the run's one-time cost."""

    def __init__(self, w: Workload) -> None:
        self.inner, self.batch_size = w.train, w.train.batch_size  # a trainer may read batch_size
        self.data = DataLoader(w.train.dataset, batch_size=w.train.batch_size)
        self.net, self.loss_fn = w.model(), nn.CrossEntropyLoss()
        self.opt = w.optimizer(self.net)
        self.skip, self.steps = w.sizes.skip, 0
        self.bare = self.bare_window = 0.0  # the bare steps' time: in all, and in the steady state
        self.start = self.end = 0.0  # the steady state's bounds (perf_counter)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        bare, cpu, fd, clock = iter(self.data), time.thread_time, open_schedstat(), time.perf_counter
        try:
            for batch in self.inner:
                inputs, labels = next(bare)
                if self.steps == self.skip:
                    self.start = clock()
                started, waited = cpu(), run_delay(fd)
                self.opt.zero_grad()
                self.loss_fn(self.net(inputs), labels).backward()
                self.opt.step()
                seconds = cpu() - started + run_delay(fd) - waited
                self.bare += seconds
                self.bare_window += seconds if self.steps >= self.skip else 0.0
                self.steps += 1
                yield batch
                self.end = clock()
        finally:
            if fd >= 0:
                os.close(fd)


def open_schedstat() -> int:
    """A descriptor of this thread's ``/proc`` schedstat, or -1 where there is none."""
    try:
        return os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
    except OSError:
        return -1


def run_delay(fd: int) -> float:
    """Seconds the thread has waited, runnable, for a core (its schedstat's second field; 0 without one)."""
    return int(os.pread(fd, 64, 0).split()[1]) / 1e9 if fd >= 0 else 0.0


Runs = dict[str, list[tuple[float, float, float]]]  # per run (named by its first row): bare, own, one-time seconds


def measure(w: Workload, rows: list[Row], reps: int, quiet: bool = False) -> Runs:
    """Each distinct row function once per repetition through a Lockstep loader, interleaved and rotated."""
    names: dict[Callable[[Workload], None], str] = {}
    for row in rows:
        names.setdefault(row.fn, row.name)
    order, runs = list(names.items()), {name: [] for name in names.values()}
    for rep in range(reps):
        if not quiet:
            print(f"{w.name} repetition {rep + 1}/{reps} (load average {loadavg()})", flush=True)
        for fn, name in order[rep % len(order) :] + order[: rep % len(order)]:
            gc.collect()
            torch.set_num_threads(1)
            pace = Lockstep(w)
            started = time.perf_counter()
            fn(replace(w, train=pace))
            wall = time.perf_counter() - started
            if pace.steps != w.sizes.steps:
                raise RuntimeError(f"{name} took {pace.steps} batches on {w.name}, expected {w.sizes.steps}")
            window = pace.end - pace.start
            own, once = window - pace.bare_window, wall - window - (pace.bare - pace.bare_window)
            runs[name].append((pace.bare_window, own, once))
            if not quiet:
                ratio, ms = pace.bare_window / own, pace.bare_window / (pace.steps - pace.skip) * 1e3
                print(f"  {name:<32} ratio {ratio:.3f}, bare step {ms:.2f} ms, one-time {once:.2f} s", flush=True)
    return runs


def method_cost(runs: Runs, steps: int) -> float:
    """The method's own cost in seconds per step: the control's own time less its bare steps', per step (median
    over its runs), capped at the smallest such excess of any run (the cost is part of every row's, so a
    control slowed by something else cannot take out more than a row was charged)."""
    return min(statistics.median((own - bare) / steps for bare, own, _ in found) for found in runs.values())


def ratios(w: Workload, rows: list[Row], runs: Runs) -> dict[str, tuple[list[float], list[float]]]:
    """Per row, its ratio to its base in each repetition: (as measured, control taken out)."""
    steps = w.sizes.steps - w.sizes.skip
    excess = method_cost(runs, steps)
    run_of = {row.name: next(r.name for r in rows if r.fn is row.fn) for row in rows}

    def to_bare(name: str, cost: float) -> list[float]:
        return [bare / (own - cost * steps) for bare, own, _ in runs[run_of[name]]]

    found = {}
    for row in rows:
        raw, corrected = to_bare(row.name, 0.0), to_bare(row.name, excess)
        if row.base != CONTROL:  # over the base row's ratio in the same repetition
            raw = [a / b for a, b in zip(raw, to_bare(row.base, 0.0), strict=True)]
            corrected = [a / b for a, b in zip(corrected, to_bare(row.base, excess), strict=True)]
        found[row.name] = (raw, corrected)
    return found


def verdict(values: list[float], target: float | None) -> str:
    """met when every repetition is at or above the target, missed when none is, else not resolved."""
    if target is None:
        return "—"
    if min(values) >= target:
        return "met"
    return "**missed**" if max(values) < target else "not resolved (repetitions on both sides)"


HEADER = (
    "row|relative to|ratio as measured (median)|control taken out (median)|per-repetition range|one-time (s)|"
    "target|verdict"
)
RUNS_HEADER = "run|repetition|steady steps|bare (s)|own (s)|one-time (s)"


def table(header: str, rows: list[list[str]]) -> str:
    cells = header.split("|")
    lines = ["| " + " | ".join(cells) + " |", "|" + "|".join("---" for _ in cells) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


Summary = dict[str, tuple[str, str]]  # per row: its ratio cell ("median (range)") and its verdict


def workload_section(w: Workload, rows: list[Row], runs: Runs, skipped: Mapping[str, str]) -> tuple[str, Summary]:
    """A workload's heading, sizes, main table, the method's cost and every run's seconds; and its summary."""
    found, body, summary = ratios(w, [r for r in rows if r.name not in skipped], runs), [], {}
    for row in rows:
        target = row.targets.get(w.name)
        if row.name in skipped:
            body.append([row.name, row.base, "skipped", "—", "—", "—", "—", skipped[row.name]])
            summary[row.name] = ("skipped", "—")
            continue
        raw, cor = found[row.name]
        median, spread = f"{statistics.median(cor):.3f}", f"{min(cor):.3f}–{max(cor):.3f}"
        goal = "—" if target is None else f">= {target:.2f}"
        run = next(r.name for r in rows if r.fn is row.fn)
        once = f"{statistics.median(o for _, _, o in runs[run]):.2f}" if row.base == CONTROL else "—"
        body.append(
            [row.name, row.base, f"{statistics.median(raw):.3f}", median, spread, once, goal, verdict(cor, target)]
        )
        summary[row.name] = (f"{median} ({spread})", "—" if target is None else f"{goal}: {verdict(cor, target)}")
    s = w.sizes
    steady = s.steps - s.skip
    bare_ms = statistics.median(b for b, _, _ in runs[CONTROL]) / steady * 1e3
    cost = method_cost(runs, steady) * 1e6
    each = [
        [n, str(i + 1), str(steady), f"{b:.6f}", f"{o:.6f}", f"{t:.6f}"]
        for n, v in runs.items()
        for i, (b, o, t) in enumerate(v)
    ]
    text = (
        f"## {w.name}: {w.title}\n\n{s.steps} steps per run (the steady state: steps {s.skip + 1} to {s.steps}), "
        f"{s.reps} repetitions, bare step {bare_ms:.2f} ms (median over the control's runs).\n\n"
        f"{table(HEADER, body)}\n\nThe method's own cost, taken out: "
        f"{cost:.1f} us per step. One-time: set-up, the steps before the steady state and the close, less their "
        f"bare steps.\n\nEvery run ({w.name}; seconds; bare: the paired bare steps' time in the steady state; own: "
        f"the steady state's wall time less that):\n\n{table(RUNS_HEADER, each)}\n"
    )
    return text, summary


def summary_table(rows: list[Row], summaries: dict[str, Summary]) -> str:
    """One line per row: its ratio to its base in each workload (control taken out: median and range) and
    its targets' verdicts: what the README quotes."""
    names = list(summaries)
    body = []
    for r in rows:
        verdicts = [f"{n} {summaries[n][r.name][1]}" for n in names if summaries[n][r.name][1] != "—"]
        title = r.name if r.base == CONTROL or r.base in r.name else f"{r.name} (vs {r.base})"
        body.append([title, *(summaries[n][r.name][0] for n in names), "; ".join(verdicts) or "—"])
    return table("row|" + "|".join(f"{n} ratio (range)" for n in names) + "|target: verdict", body)


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or "unknown"
    info = {"CPU": cpu, "cores": str(os.cpu_count()), "Python": platform.python_version()}
    info["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for dist in ("torch", "torchvision", "tensorboard", "pluggy", "matplotlib", "tbhooks", "tbhooks-figures",
                 "tbhooks-example", "pytorch-lightning", "pytorch-ignite"):  # fmt: skip
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "not installed"
    return info


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


METHOD = """\
Lockstep: each row trains through a loader that, before handing over each batch, runs one step of a bare
loop on its own copy of the network and data, so the row and a bare loop alternate step by step in one
process and load from other processes falls on both. A bare step's time is the thread's CPU time plus its
run delay (runnable, waiting for a core: `/proc/<pid>/task/<tid>/schedstat`, {delay}); time the thread
sleeps (for the interpreter lock held by a row's background thread, say) is charged to the row. The ratio is
the steady state's: from the bare step before batch `skip + 1` to the row's last step (evaluations, logging
steps and background work in between included), bare steps' time / the row's own time (that stretch's wall
time less its bare steps'). What set-up, the first steps (the graph's trace) and the close cost, less their
bare steps, is the row's one-time cost, in seconds, beside it. The control (the bare loop against itself)
measures the method's own cost per step (median over its runs, capped at the smallest excess of any run),
which is taken out of every row's own time. A row relative to another row: its ratio over that row's,
repetition by repetition. Rows run once per repetition, interleaved, the order rotating, after a warm-up run
each. Verdict: met when every repetition is at or above the target, missed when none is, else not resolved.
'Within 1 point of plain SummaryWriter' is checked as at most 1% slower than it. One thread; random data, an
epoch being one interval (the Trainer evaluates after each); SGD (lr 0.001, momentum 0.9), cross-entropy;
every row on its workload's schedule."""


def render(info: dict[str, str], sections: list[str], workloads: list[Workload], extra: dict[str, Any]) -> str:
    """RESULTS.md: the summary, machine, method, sizes, rows, then each workload's section."""
    out = ["# tbhooks benchmark results\n", "Written by `benchmarks/run.py` (`make bench`); do not edit by hand.\n"]
    if extra["quick"]:
        out.append("**--quick run: tiny sizes for the smoke test; these numbers mean nothing.**\n")
    out.append(f"## Summary\n\nSteady-state ratios, control taken out; {info['date']}.\n\n{extra['summary']}\n")
    out.append("## Machine\n\n" + "".join(f"- {k}: {v}\n" for k, v in info.items()))
    out[-1] += f"- load average (1/5/15 min) at start: {extra['load'][0]}; at end: {extra['load'][1]}\n"
    out[-1] += f"- total time of this run: {extra['elapsed']:.0f} s\n"
    out.append("## Method\n\n" + METHOD.format(delay="read here" if extra["schedstat"] else "NOT here") + "\n")
    sizes = []
    for w in workloads:
        s, scale = w.sizes, DEFAULT_SCHEDULE[1] // w.sizes.interval
        schedule = "tbhooks' default" if not w.scaled else f"tbhooks' default, intervals divided by {scale}"
        sizes.append([w.name, w.title, str(s.steps), str(s.reps), str(s.scalars), str(s.interval), schedule])
    head = "workload|network and data|steps per run|repetitions|scalars every|histograms, evaluations every|schedule"
    out.append("## Sizes\n\n" + table(head, sizes) + "\n")
    described = {row.fn: row.name for row in reversed(ROWS)}  # each function once, under its first row's name
    lines = [f"- {name}: {' '.join((fn.__doc__ or '').split())}".replace("``", "`") for fn, name in described.items()]
    lines += [f"- plugins the tbhooks {row} row registered: {names}" for row, names in sorted(PLUGINS.items())]
    out.append("## Rows\n\n" + "\n".join(lines) + "\n")
    return "\n".join(out + sections) + "\n"


README_START = "<!-- make bench writes from here -->"
README_END = "<!-- make bench writes up to here -->"


def quote_in_readme(report: str, readme: Path) -> None:
    """Copy the summary table into the README between its markers, so the figures the README quotes are
    always the latest this command measured (never typed in)."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        print(f"{readme}: no benchmark markers; not quoted")
        return
    summary = report.split("## Summary\n\n", 1)[1].split("\n## ", 1)[0].strip()
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + f"{README_START}\n{summary}\n{README_END}" + text[end:])
    print(f"quoted the summary in {readme}")


FULL = {
    "W1": Sizes(steps=2000, interval=1000, scalars=50, reps=4, skip=20),
    "W2": Sizes(steps=1000, interval=1000, scalars=50, reps=3, channels=12, skip=5),
}
QUICK = {"W1": Sizes(steps=20, interval=10, scalars=5, reps=2, skip=2), "W2": Sizes(4, 2, 1, 2, channels=4, skip=1)}


def skipped_rows(rows: list[Row]) -> dict[str, str]:
    """The rows that cannot run here (a peer not installed, or a base row skipped), with why."""
    skipped = {r.name: f"{r.needs} not installed (pip install -e '.[bench]')" for r in rows if r.needs and not
               importlib.util.find_spec(r.needs)}  # fmt: skip
    skipped.update({r.name: f"{r.base} is skipped" for r in rows if r.base in skipped})
    return skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for the smoke test (numbers meaningless)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="where to write the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the peers' advice and deprecations are not what is measured, but
    warnings.simplefilter("default", tbhooks.TbhooksWarning)  # a faulty plugin would change what a row measures
    begun, info, load = time.perf_counter(), machine(), loadavg()
    print("tbhooks benchmark" + (" (--quick: numbers meaningless)" if args.quick else ""), flush=True)
    print("\n".join(f"  {key}: {value}" for key, value in info.items()))
    skipped = skipped_rows(ROWS)
    for name, why in skipped.items():
        print(f"note: skipping {name}: {why}")
    if not importlib.util.find_spec("tbhooks_figures"):
        print("note: tbhooks-figures is not installed: the every-plugin row draws no figure")
    rows, sections, workloads, summaries = [row for row in ROWS if row.name not in skipped], [], [], {}
    with tempfile.TemporaryDirectory(prefix="tbhooks-bench-") as tmp:
        for name, sizes in (QUICK if args.quick else FULL).items():
            w = make_workload(name, sizes, Path(tmp))
            print(f"\n{name}: {w.title}" + ("" if args.quick else "; warm-up: every row once"), flush=True)
            if not args.quick:  # the quick run's sizes are a warm-up's
                measure(make_workload(name, sizes.warm(), Path(tmp)), rows, 1, quiet=True)
            section, summaries[name] = workload_section(w, ROWS, measure(w, rows, sizes.reps), skipped)
            sections.append(section)
            workloads.append(w)
            print("\n" + sections[-1].split("\n\nEvery run")[0], flush=True)
    schedstat = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").exists()
    extra = {"quick": args.quick, "load": (load, loadavg()), "elapsed": time.perf_counter() - begun}
    extra["summary"] = summary_table(ROWS, summaries)
    report = render(info, sections, workloads, {**extra, "schedstat": schedstat})
    args.out.write_text(report)
    print(f"\nwrote {args.out} ({extra['elapsed']:.0f} s in all)")
    if not args.quick and args.out.resolve() == (HERE / "RESULTS.md").resolve():
        quote_in_readme(report, HERE.parent / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
