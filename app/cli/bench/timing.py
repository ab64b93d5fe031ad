"""Running contenders side by side and summarising them.

    Case(name, title, contenders, baseline, details)    what one comparison runs
    run_case(case, runs) -> CaseResult                  warm-up, then `runs` rounds in rotating order
    CaseResult.as_dict()                                raw numbers, medians, ratios (what the JSON holds)

A contender is a function that does one run and returns its metrics ({"seconds": ..., and for
the load case "peak_rss_mb": ...}). Each round runs every contender once; the order rotates from
round to round, so neither side always runs first, right after the other has filled caches or
heated the CPU. Ratios are taken within a round (ours / baseline of the same round), so a burst
of load from elsewhere on the machine lands on both halves of a ratio; the reported ratio is the
median of those per-round ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Metrics = dict[str, float]


@dataclass
class Case:
    name: str                                        # short id, what --only takes
    title: str                                       # for the report
    contenders: dict[str, Callable[[], Metrics]]     # run name -> one run
    baseline: str | None = "diffusers"               # the run the others are divided by; None: no comparison
    details: dict = field(default_factory=dict)      # shapes, steps, parity: recorded as they are
    warmup: Callable[[], None] | None = None         # default: one untimed run of every contender
    # contender -> the run it is divided by, where that differs per contender (against OpenVINO each of
    # our precisions is divided by OpenVINO at the same precision); None: everyone by `baseline`
    pairs: dict[str, str] | None = None

    def ratio_pairs(self) -> dict[str, str]:
        """contender -> its baseline, for every contender that has one."""
        if self.pairs is not None:
            return dict(self.pairs)
        if self.baseline is None:
            return {}
        return {name: self.baseline for name in self.contenders if name != self.baseline}


@dataclass
class CaseResult:
    case: Case
    rounds: list[list[str]]                          # the order the contenders ran in, round by round
    raw: dict[str, list[Metrics]]                    # contender -> one Metrics per round

    def values(self, contender: str, metric: str) -> list[float]:
        return [run[metric] for run in self.raw[contender]]

    def metrics(self) -> list[str]:
        first = next(iter(self.raw.values()))
        return list(first[0])

    def ratios(self, contender: str, metric: str) -> list[float]:
        """contender / its baseline, round by round."""
        base = self.values(self.case.ratio_pairs()[contender], metric)
        return [ours / theirs for ours, theirs in zip(self.values(contender, metric), base, strict=True)]

    def compared(self) -> list[str]:
        return list(self.case.ratio_pairs())

    def as_dict(self) -> dict:
        out = {"name": self.case.name, "title": self.case.title, "baseline": self.case.baseline,
               "baselines": self.case.ratio_pairs(), "details": self.case.details, "rounds": self.rounds,
               "metrics": {}}
        for metric in self.metrics():
            out["metrics"][metric] = {
                "raw": {name: self.values(name, metric) for name in self.raw},
                "median": {name: statistics.median(self.values(name, metric)) for name in self.raw},
                "ratios": {name: self.ratios(name, metric) for name in self.compared()},
                "median_ratio": {name: statistics.median(self.ratios(name, metric)) for name in self.compared()},
            }
        return out


def run_case(case: Case, runs: int, report: Callable[[str], None] = lambda line: None) -> CaseResult:
    if case.warmup is not None:
        case.warmup()
    else:   # first calls pay for allocations, kernel choices and lazy imports: not what we compare
        for run in case.contenders.values():
            run()
    names = list(case.contenders)
    raw: dict[str, list[Metrics]] = {name: [] for name in names}
    rounds = []
    for r in range(runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            raw[name].append(case.contenders[name]())
            report(f"  {case.name} round {r + 1}/{runs} {name}: {raw[name][-1]['seconds']:.3f} s")
        rounds.append(order)
    return CaseResult(case, rounds, raw)


def synchronize(device: torch.device | str) -> None:
    """CUDA runs asynchronously: without this a timer reads when work was queued, not done."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], object], device: torch.device | str) -> Callable[[], Metrics]:
    """A contender that times `work` on `device` (no gradients, as inference runs)."""
    def run() -> Metrics:
        with torch.no_grad():
            synchronize(device)
            started = time.perf_counter()
            work()
            synchronize(device)
            return {"seconds": time.perf_counter() - started}
    return run
