"""Smoke tests of the benchmark scripts (`benchmarks/run.py --quick`, `benchmarks/cuda_check.py` on the CPU).

The quick run's RESULTS file is checked for consistency, not for speed (its
numbers mean nothing): every row of ``run.ROWS`` is there for both
workloads, and each ratio, range and verdict is recomputed from the raw
seconds the file lists for every run.
"""

from __future__ import annotations

import importlib.util
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
bench = sys.modules["bench_run"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(bench)


def _table(text: str, first_header: str) -> list[list[str]]:
    """The body of the Markdown table whose header starts with ``| first_header |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    assert re.fullmatch(r"\|(---\|)+", lines[start + 1]), lines[start + 1]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def _check_workload(section: str, name: str, skipped: dict[str, str]) -> None:
    """Every row of the workload's table agrees with the runs listed under it; a row that could not run here
    (``skipped``: its peer framework is not installed) reads "skipped" with the reason, and has no runs."""
    main = _table(section, "row")
    assert [r[0] for r in main] == [row.name for row in bench.ROWS]
    ran = [row for row in bench.ROWS if row.name not in skipped]
    runs: dict[str, list[tuple[float, float]]] = {}
    once: dict[str, list[float]] = {}
    steps = set()
    for run, rep, count, bare, own, one_time in _table(section, "run"):
        assert int(rep) == len(runs.setdefault(run, [])) + 1
        steps.add(int(count))
        runs[run].append((float(bare), float(own)))
        once.setdefault(run, []).append(float(one_time))
        assert float(bare) > 0 and float(own) > 0
    (n,) = steps
    assert len({len(v) for v in runs.values()}) == 1  # every run in every repetition
    excess = min(statistics.median((own - bare) / n for bare, own in found) for found in runs.values())
    shown = float(re.search(r"The method's own cost, taken out: (-?[\d.]+) us per step", section).group(1))
    assert shown == pytest.approx(excess * 1e6, abs=0.5)  # seconds are shown to the microsecond

    by_name = {row.name: row for row in bench.ROWS}
    run_of = {row.name: next(r.name for r in ran if r.fn is row.fn) for row in ran}
    assert set(runs) == set(run_of.values())

    def to_bare(row: str, cost: float) -> list[float]:
        return [bare / (own - cost * n) for bare, own in runs[run_of[row]]]

    for title, base, measured, median, spread, one_time, target, verdict in main:
        row = by_name[title]
        assert base == row.base
        if title in skipped:
            assert (measured, verdict) == ("skipped", skipped[title]), title
            assert {median, spread, one_time, target} == {"—"}, title
            continue
        if base == bench.CONTROL:  # the run's one-time seconds, the median of its repetitions
            assert float(one_time) == pytest.approx(statistics.median(once[run_of[title]]), abs=5e-3), title
        raw, corrected = to_bare(title, 0.0), to_bare(title, excess)
        if base != bench.CONTROL:
            raw = [a / b for a, b in zip(raw, to_bare(base, 0.0), strict=True)]
            corrected = [a / b for a, b in zip(corrected, to_bare(base, excess), strict=True)]
        assert float(measured) == pytest.approx(statistics.median(raw), abs=2e-3), title
        assert float(median) == pytest.approx(statistics.median(corrected), abs=2e-3), title
        low, high = (float(x) for x in spread.split("–"))
        assert 0 < low <= float(median) <= high
        assert (low, high) == pytest.approx((min(corrected), max(corrected)), abs=2e-3), title
        goal = row.targets.get(name)
        assert target == ("—" if goal is None else f">= {goal:.2f}")
        if goal is None:
            assert verdict == "—"
        elif min(abs(low - goal), abs(high - goal)) >= 2e-3:  # else the rounded ends cannot tell the side
            expected = "met" if low >= goal else "**missed**" if high < goal else "not resolved"
            assert verdict.startswith(expected), (title, low, high, goal, verdict)


@pytest.mark.slow
def test_quick_run_writes_a_consistent_table(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert "--quick run" in text
    skipped = bench.skipped_rows(bench.ROWS)  # the peers not installed here: the run reports their rows skipped
    for row, why in skipped.items():
        assert f"note: skipping {row}: {why}" in done.stdout
    for heading in ("## Machine", "## Method", "## Sizes", "## Rows"):
        assert f"\n{heading}\n" in text
    assert re.search(r"^- torch: \d", text, re.M)
    sizes = {r[0]: r for r in _table(text, "workload")}
    assert list(sizes) == list(bench.QUICK)
    for name, quick in bench.QUICK.items():
        assert sizes[name][2:6] == [str(quick.steps), str(quick.reps), str(quick.scalars), str(quick.interval)]
        section = text.split(f"\n## {name}: ", 1)[1].split("\n## ", 1)[0]
        steady = f"(the steady state: steps {quick.skip + 1} to {quick.steps}), {quick.reps} repetitions"
        assert section.count(f"{quick.steps} steps per run {steady}")
        _check_workload(section, name, skipped)
        # The command prints each workload's table as it goes.
        assert section.split("\n\n")[2] in done.stdout
    # The summary (what the README quotes): each workload's median, range and verdict of every row.
    summary = _table(text.split("## Summary", 1)[1], "row")
    assert [r[0].split(" (vs ")[0] for r in summary] == [row.name for row in bench.ROWS]  # "(vs base)" added
    for index, name in enumerate(bench.QUICK):
        section = text.split(f"\n## {name}: ", 1)[1].split("\n## ", 1)[0]
        for line, (title, _, _, median, spread, _, target, verdict) in zip(
            summary, _table(section, "row"), strict=True
        ):
            expected = "skipped" if title in skipped else f"{median} ({spread})"
            assert line[1 + index] == expected, (name, title)
            assert (f"{name} {target}: {verdict}" in line[-1]) == (target != "—"), (name, title)
    # The tbhooks rows load the installed plugins' entry points (autoload on, as make installs them).
    registered = re.search(r"^- plugins the tbhooks default row registered: (.*)$", text, re.M).group(1).split(", ")
    assert {"scalars", "histograms", "graph"} <= set(registered)
    for dist, plugin in (("tbhooks_figures", "figures"), ("tbhooks_example", "example")):
        assert (plugin in registered) == (importlib.util.find_spec(dist) is not None)


@pytest.mark.slow
def test_cuda_check_runs_on_the_cpu(tmp_path: Path) -> None:
    """``benchmarks/cuda_check.py`` runs only on lent GPU machines: tried out here on the CPU, tiny sizes."""
    out = tmp_path / "cuda.md"
    command = [sys.executable, str(ROOT / "benchmarks" / "cuda_check.py"), "--device", "cpu"]
    command += ["--steps", "32", "--skip", "2", "--reps", "1", "--resnet-batch", "4", "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    assert re.findall(r"^- (.*); steps 3 to 32 of each run timed:$", report, re.M) == [
        "the tutorial's network, batch 4, 28x28x1",
        "ResNet-18, batch 4, 32x32x3, bf16",
    ]
    for row in ("bare loop", "tbhooks default"):
        found = re.findall(
            rf"^  - {re.escape(row)}: [\d,]+ steps/s \(range [\d,]+–[\d,]+\), ratio to bare \d\.\d{{3}}$", report, re.M
        )
        assert len(found) == 2, row
