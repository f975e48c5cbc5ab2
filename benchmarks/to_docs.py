"""Write ``docs/benchmarks.md`` from a run of the benchmarks, with the machine and the date.

    python benchmarks/to_docs.py                       # run them (about 90 s), write the page
    python benchmarks/to_docs.py --save-json run.json  # ... and keep the run's data
    python benchmarks/to_docs.py --from-json run.json  # write the page from saved data

Runs the benchmarks ``benchmarks/goals.py`` runs, the way it runs them (each in its own
processes, one after the other), and judges their goals with its rules and tolerance, so
the page says what ``python benchmarks/goals.py`` would. The page is generated, never
edited by hand: run this again (on a quiet machine) to refresh it, and commit the result.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent / "docs" / "benchmarks.md"

WHAT = {
    "holds.py": (
        "Holds and state reads, side by side in interleaved rounds, against an awaited "
        "no-op coroutine, a *minimal correct hold* written in the benchmark (a lock and a "
        "table of frames that leave in any order) and fastapi-maintenance 0.0.5, the peer "
        "library (its `maintenance_mode_on()` built per entry, as its docs use it). Each "
        "row is the median over several processes of its best round; maintguard's memory "
        "and file stores hold a recurring planned window, as a deployment with planned "
        "maintenance would. Goals compare rows with each other: the cost of a hold against "
        "the minimal hold and the peer, nested holds, leaving one of 10,000 live holds in "
        "either order, deep nesting, file holds (two fsynced atomic writes) and a guarded "
        "call while maintenance is off."
    ),
    "middleware.py": (
        "Raw ASGI requests through the web middleware. In each of several processes every "
        "variant is measured side by side in interleaved rounds (the garbage collector "
        "paused inside a round, as `timeit` does); a ratio is the median over the "
        "processes, its range in brackets. Two apps: 20 routes, and 1,000 routes hit at a "
        "new path every request (so no cache by path can help), with one forced and one "
        "exempt route. Goals: the off path against a pure ASGI middleware that only calls "
        "the app (with and without metrics), the 503 of the on path against the bare app, "
        "and forced and exempt routes on the large app."
    ),
}
ELSEWHERE = (
    "`python benchmarks/propagation.py` (not part of this run: it needs a Redis server and "
    "uvicorn) times how long a switch made in one process takes to reach another "
    "process's app, for the file store with OS notifications, the file store polling, and "
    "Redis pub/sub, and counts the backend calls an app makes while it serves 1,000 "
    "requests (none per request)."
)


def load_goals() -> ModuleType:
    """``benchmarks/goals.py`` as a module: its runner, its parser and its verdicts."""
    spec = importlib.util.spec_from_file_location("maintguard_bench_goals", HERE / "goals.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


def collect(tolerance: float = 0.03, quick: bool = False) -> dict[str, Any]:
    """Run the benchmarks as ``goals.py`` does; return the run as JSON-ready data."""
    goals = load_goals()
    results: list[dict[str, Any]] = []
    outputs: dict[str, str] = {}
    failed: list[str] = []
    for name in goals.BENCHMARKS:
        with contextlib.redirect_stdout(io.StringIO()):  # the page gets it, not the terminal
            code, output = goals.run(name, quick)
        print(f"ran {name}: exit {code}", file=sys.stderr)
        found = goals.parse(name, output)
        if code != 0 or not found:
            failed.append(f"{name} exited {code}" if code else f"{name} reported no goals")
        outputs[name] = output
        for goal in found:
            results.append(
                {
                    "source": goal.source,
                    "text": goal.text,
                    "value": goal.value,
                    "op": goal.op,
                    "target": goal.target,
                    "verdict": goal.verdict(tolerance),
                }
            )
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "tolerance": tolerance,
        "quick": quick,
        "goals": results,
        "failed": failed,
        "outputs": outputs,
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _number(value: float) -> str:
    return f"{value:g}"


def render(run: dict[str, Any]) -> str:
    """The markdown page for one run (what :func:`collect` returns, or its saved JSON)."""
    m = run["machine"]
    goals = run["goals"]
    missed = sum(g["verdict"] in ("MISSED", "FAILED") for g in goals)
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by benchmarks/to_docs.py from a run of the benchmarks: do not edit;",
        "     run `python benchmarks/to_docs.py` again and commit the page. -->",
        "",
        "Every speed goal of maintguard, as `python benchmarks/goals.py` judges it, from one "
        "run on the machine below. Timing on a shared machine moves by a few percent from run "
        "to run: a goal missed by less than the tolerance is reported as `noise`.",
        "",
        "| | |",
        "|---|---|",
        f"| date | {_cell(run['date'])} |",
        f"| platform | {_cell(str(m['platform']))} |",
        f"| CPU | {_cell(str(m['cpu']))} |",
        f"| CPU count | {m['cpu_count']} |",
        f"| Python | {_cell(str(m['python']))} |",
        f"| tolerance | {run['tolerance']:.0%} of the target |",
        "",
    ]
    if run.get("quick"):
        lines += [
            "!!! warning",
            "    A smoke run (`--quick`, tiny counts): the figures mean nothing.",
            "",
        ]
    lines += [
        "## Goals",
        "",
        f"{len(goals) - missed} of {len(goals)} goals met (as `goals.py` counts: `noise`, a "
        "goal missed by less than the tolerance, does not count as missed).",
        "",
        "| result | goal | figure | target | benchmark |",
        "|---|---|---|---|---|",
    ]
    for g in goals:
        verdict = {"ok": "met", "noise": "noise"}.get(g["verdict"], g["verdict"])
        if g["verdict"] in ("MISSED", "FAILED"):
            verdict = f"**{verdict.lower()}**"
        figure = "—" if g["value"] is None else _number(g["value"])
        target = "—" if g["value"] is None else f"{g['op']} {_number(g['target'])}"
        lines.append(
            f"| {verdict} | {_cell(g['text'])} | {figure} | {_cell(target)} | "
            f"`{_cell(g['source'])}` |"
        )
    for line in run["failed"]:
        lines.append(f"| **failed** | {_cell(line)} | — | — | |")
    lines += [
        "",
        "Figures are ratios (a time against another row's, or a throughput against another "
        "variant's) except the guarded call's, which is extra microseconds over the bare "
        "call.",
        "",
        "## What each benchmark measures",
        "",
    ]
    for name, what in WHAT.items():
        lines += [f"### `benchmarks/{name}`", "", what, ""]
        output = run.get("outputs", {}).get(name)
        if output:
            lines += [
                f'??? note "Output of `python benchmarks/{name}` in this run"',
                "",
                "    ```text",
                *[f"    {line}".rstrip() for line in output.rstrip().splitlines()],
                "    ```",
                "",
            ]
    lines += [
        "### `benchmarks/propagation.py`",
        "",
        ELSEWHERE,
        "",
        "## Running them",
        "",
        "```sh",
        "pip install -e '.[examples]' -r benchmarks/requirements.txt",
        "python benchmarks/goals.py        # every goal, one verdict (exit 1: a goal missed)",
        "python benchmarks/to_docs.py      # the same run, written to this page",
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-json", type=Path, metavar="PATH", help="a saved run: run nothing")
    parser.add_argument("--save-json", type=Path, metavar="PATH", help="also save the run's data")
    parser.add_argument("--output", type=Path, default=PAGE, help=f"default: {PAGE}")
    parser.add_argument("--tolerance", type=float, default=0.03, help="as goals.py's")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny counts")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        run = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        run = collect(args.tolerance, args.quick)
    if args.save_json is not None:
        args.save_json.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    args.output.write_text(render(run), encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
