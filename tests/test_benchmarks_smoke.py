"""Smoke test of the benchmark harness (`benchmarks/run.py --quick`).

It runs the whole harness on tiny sizes in a subprocess and checks that the
RESULTS file it writes is well-formed and internally consistent: every row is
there, numbers parse, each ratio agrees with the steps/s it was computed
from, and each met/missed verdict agrees with its ratio and target.  There
is no timing assertion: --quick numbers mean nothing.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROWS = [
    "bare loop",
    "tbhooks default (autoload off)",
    "tbhooks all (figures every 1000 steps)",
    "tbhooks default + measure_overhead",
    "tbhooks default, flush_secs=120",
    "tutorial-style SummaryWriter",
    "Lightning + TensorBoardLogger",
    "Ignite + TensorboardLogger",
]
PEERS = {"Lightning + TensorBoardLogger": "pytorch_lightning", "Ignite + TensorboardLogger": "ignite"}
LOCKSTEP_ONLY = {"tbhooks default + measure_overhead", "tbhooks default, flush_secs=120"}


def _table(text: str, first_header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header starts with ``| first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    assert re.fullmatch(r"\|(---\|)+", lines[start + 1]), lines[start + 1]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def _verdict_agrees(value: float, target: float, verdict: str, higher_is_better: bool) -> None:
    if abs(value - target) < 1e-3:  # printed values are rounded: too close to call from the text
        return
    ok = value >= target if higher_is_better else value <= target
    assert verdict == ("met" if ok else "**missed**"), (value, target, verdict)


def _quotient_agrees(shown: float, numerator: float, denominator: float, step: float) -> None:
    """``shown`` is ``numerator / denominator``, all three printed rounded to ``step``.

    Rounding is what the bounds allow for: with the quick run's small times (a histogram in a few
    milliseconds, printed to 0.1 ms) rounding alone can move the quotient by more than a fixed 5%."""
    half = step / 2
    low = (numerator - half) / (denominator + half) - half
    high = (numerator + half) / (denominator - half) + half if denominator > half else float("inf")
    assert low - 1e-9 <= shown <= high + 1e-9, (shown, numerator, denominator)


def _target_agrees(ratio: float, low: float, high: float, target: str, verdict: str) -> None:
    """A ratio row's result cell agrees with its ratio, its repetitions' range and its target."""
    if target == "—":
        assert verdict == "—"
        return
    goal = float(target.removeprefix(">= "))
    if min(abs(low - goal), abs(high - goal)) < 1e-3:  # an end of the range rounds onto the target: too close to call
        return
    # "not resolved" exactly when the repetitions' ratios fall on both sides of the target; else met or missed.
    if low < goal <= high:
        assert verdict == "not resolved (repetitions on both sides)", (verdict, low, high, goal)
    else:
        _verdict_agrees(ratio, goal, verdict, higher_is_better=True)


@pytest.mark.slow
def test_quick_run_writes_a_consistent_table(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert "--quick run" in text
    assert "## Machine" in text and "## How measured" in text
    assert re.search(r"^- torch: \d", text, re.M)

    main = _table(text, "row")
    # The default row's two variants are timed in the lockstep run only.
    assert [r[0] for r in main] == [title for title in ROWS if title not in LOCKSTEP_ONLY]
    steps = {}
    for title, rate, rates, ratio, spread, by_cpu, cold, target, verdict in main:
        if title in PEERS and importlib.util.find_spec(PEERS[title]) is None:
            assert rate == "skipped"
            continue
        steps[title] = float(rate)
        assert steps[title] > 0
        low, high = (float(x) for x in spread.split("–"))
        assert 0 < low <= high
        slowest, fastest = (float(x) for x in rates.split("–"))
        assert slowest - 0.5 <= steps[title] <= fastest + 0.5  # the median lies in the range (rounded)
        assert float(by_cpu) > 0 and float(cold) > 0
        _target_agrees(float(ratio), low, high, target, verdict)
    bare = steps["bare loop"]
    for title, _, _, ratio, *_ in main:
        if title in steps:
            # The ratio is of the medians shown, up to their rounding.
            assert float(ratio) == pytest.approx(steps[title] / bare, rel=2e-3, abs=2e-3)
    assert main[0][3] == "1.000"

    # The all row really did the work it claims: read back from its last log directory.
    wrote = re.search(r"^What the last timed all run wrote .*$", text, re.M).group(0)
    assert "graph: yes" in wrote
    for kind in ("activations", "grads", "weights"):
        assert re.search(rf"\d+ {kind}", wrote), wrote
    assert "images/inputs" in wrote
    if importlib.util.find_spec("tbhooks_figures") is not None:
        assert "figures/predictions_vs_actuals x1" in wrote and "figures/confusion_matrix x1" in wrote

    # The same rows in lockstep with a bare loop (the bare loop against itself is the control).
    lock = _table(text, "row (in lockstep with a bare loop)")
    once = {"tutorial-style SummaryWriter", *PEERS}  # no target applies to them: run once
    assert [r[0] for r in lock] == [
        t + (" (control)" if t == "bare loop" else " (1 run)" if t in once else "")
        for t in ROWS
        if t in steps or t not in PEERS
    ]
    for title, measured, ratio, spread, bare_ms, waiting, target, verdict in lock:
        low, high = (float(x) for x in spread.split("–"))
        assert 0 < low <= float(ratio) <= high
        assert float(measured) > 0
        if title.endswith("(control)"):
            # The control's own excess is what is taken out (capped at the smallest any row showed): its
            # corrected ratio is 1 (one run in the quick mode), or a little less under the cap.
            assert float(ratio) <= 1.001
        assert float(bare_ms) > 0
        float(waiting)  # parses: may be slightly negative (the CPU clock ticks coarser than the wall clock)
        _target_agrees(float(ratio), low, high, target, verdict)

    # Where the overhead goes: the default and all rows with plugins taken out, each paired with its base row.
    parts = _table(text, "row, plugins taken out (lockstep)")
    ratios = {title: float(ratio) for title, ratio, _, _ in parts}
    assert list(ratios)[:2] == ["bare loop (control)", "tbhooks default (autoload off)"]
    expected = {ROWS[1], ROWS[2], "tbhooks default without graph", "tbhooks all without histograms"}
    expected.add("tbhooks default without any plugin (the Trainer alone)")
    if importlib.util.find_spec("tbhooks_figures") is not None:
        expected.add("tbhooks all without figures")
    assert expected <= set(ratios)
    for title, ratio, spread, gain in parts:
        low, high = (float(x) for x in spread.split("–"))
        assert 0 < low <= float(ratio) <= high
        if " without " not in title:
            assert gain == "—"
            continue
        found = re.fullmatch(r"([+-][\d.]+) \(([+-][\d.]+) to ([+-][\d.]+)\)", gain)
        median, least, most = (float(x) for x in found.groups())
        assert least <= median <= most
        if low == high:  # one repetition (--quick): the gain is the difference of the two ratios shown
            base = ROWS[1] if title.startswith("tbhooks default") else ROWS[2]
            assert median == pytest.approx((float(ratio) - ratios[base]) * 100, abs=0.16)

    # A base row whose target is not met gets a sentence with its ratio and each plugin's gain from the table.
    sentences = re.findall(r"^- (tbhooks [^:]+: [\d.]+ against [\d.]+ .*)$", text, re.M)
    assert len(sentences) == sum(1 for r in lock if r[6] != "—" and r[7] != "met")
    for line in sentences:
        title, ratio, target = re.match(r"(.+?): ([\d.]+) against ([\d.]+)", line).groups()
        assert float(ratio) == ratios[title]
        if abs(float(ratio) - float(target)) >= 1e-3:  # else the rounded ratio cannot tell which side it is on
            assert ("points over at the median" in line) == (float(ratio) >= float(target))
        for what, gain in re.findall(r"([a-z_]+) ([+-][\d.]+)(?:;|\.$)", line.split("one at a time", 1)[1]):
            assert parts[[r[0] for r in parts].index(f"{title.split(' (')[0]} without {what}")][3].startswith(gain)

    micro = {r[0].split(":")[0].split(" (")[0]: r for r in _table(text, "measurement")}
    dispatch = micro["dispatch"]
    guarded, bare_us, ratio = (float(x) for x in re.findall(r"[\d.]+", dispatch[1])[:3])
    _quotient_agrees(ratio, guarded, bare_us, step=0.01)
    _verdict_agrees(ratio, 1.5, dispatch[3], higher_is_better=False)
    histogram = next(r for name, r in micro.items() if name.startswith("histogram of a"))
    theirs, ours, speedup = (float(x) for x in re.findall(r"[\d.]+", histogram[1].replace(",", ""))[:3])
    _quotient_agrees(speedup, theirs, ours, step=0.1)
    _verdict_agrees(speedup, 2.0, histogram[3], higher_is_better=True)
    figure = next(r for name, r in micro.items() if name.startswith("figures plugin, training-thread"))
    if not figure[1].startswith("skipped"):
        _verdict_agrees(float(figure[1].split()[0]), 1.0, figure[3], higher_is_better=False)
        # The result is the sum of its two parts, each the run with the plugin less the run without it.
        calls, close = (
            float(x) for x in re.search(r"calls (-?[\d.]+) ms \+ in close (-?[\d.]+) ms", figure[0]).groups()
        )
        # Three numbers each rounded to 0.01: they agree within three half-hundredths.
        assert float(figure[1].split()[0]) == pytest.approx(calls + close, abs=0.016)
    assert any(name.startswith("flush interval") for name in micro)
    assert any(name.startswith("`measure_overhead=True`") for name in micro)
    # The training-thread breakdown: both configurations, and its derived ratio agrees with its own columns.
    thread = {r[0]: r for r in _table(text, "configuration")}
    assert set(thread) == {"tbhooks default", "tbhooks all"}
    for row in thread.values():
        share = float(re.search(r"\(([\d.]+)%\)", row[4]).group(1)) / 100
        assert float(row[10]) == pytest.approx(1 / (1 + share), abs=2e-3)
        spent, whole = (float(x) for x in row[6].split(" of "))
        assert 0 < spent < whole
        assert float(row[7]) == pytest.approx(1 - spent / whole, abs=5e-3)  # ms are rounded
        _verdict_agrees(float(row[7]), float(row[8].removeprefix(">= ")), row[9], higher_is_better=True)
    # The per-plugin costs tbhooks measured itself: one line per default plugin that has hooks.
    plugins = {r[0] for r in _table(text, "plugin")}
    assert {"scalars", "histograms"} <= plugins


@pytest.mark.slow
def test_cuda_check_runs_on_the_cpu_and_attributes_the_default_row(tmp_path: Path) -> None:
    """``benchmarks/cuda_check.py`` runs only on lent GPU machines: tried out here on the CPU, tiny sizes.

    Its attribution line (``--attribute``) adds up what ``measure_overhead=True`` wrote: the graph
    plugin traces once per run, so it cannot be missing from it.
    """
    out = tmp_path / "cuda.md"
    command = [sys.executable, str(ROOT / "benchmarks" / "cuda_check.py"), "--device", "cpu"]
    command += ["--steps", "30", "--reps", "1", "--elements", "10000", "--attribute", "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    for row in ("bare loop", "tbhooks, no plugins", "tbhooks default", "tbhooks default + measure_overhead"):
        assert re.search(
            rf"^- {re.escape(row)}: [\d,]+ steps/s \(range [\d,]+–[\d,]+\), ratio to bare \d\.\d{{3}}$", report, re.M
        ), row
    attribution = re.search(r"median of the timed runs\): (.*); the default row took -?\d+ ms a run more", report)
    assert attribution, report
    per_plugin = dict(part.rsplit(" ", 1) for part in attribution.group(1).split(", "))
    assert float(per_plugin["graph"]) > 0, per_plugin
    assert "histogram of 10,000 float32 values" in report
