"""Summarise ``mutmut results --all true`` (read on stdin) into a score per module.

A mutant counts as killed when a test failed on it or it timed out (an endless loop is a
caught change); "no tests" and "survived" count against the score; mutants not yet
checked are reported apart and left out of the score. Run through
``bash benchmarks/mutation.sh``.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {"killed", "timeout", "caught by type check", "segfault"}
NOT_RUN = {"not checked", "skipped"}
_LINE = re.compile(r"^\s*(?P<module>[\w.]+)\.x[_\u01c1].*__mutmut_\d+: (?P<status>.+)$")


def configured_modules() -> set[str]:
    """Dotted names of the files in ``[tool.mutmut] only_mutate``: a module dropped from
    the list keeps its old results in ./mutants, which must not count."""
    config = tomllib.loads(Path("pyproject.toml").read_text("utf-8"))["tool"]["mutmut"]
    return {path.removesuffix(".py").replace("/", ".") for path in config["only_mutate"]}


def main() -> int:
    modules = configured_modules()
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for line in sys.stdin:
        match = _LINE.match(line.rstrip("\n"))
        if match is not None and match["module"] in modules:
            by_module[match["module"]][match["status"].strip()] += 1
    if not by_module:
        print("no mutants found: run `bash benchmarks/mutation.sh` first", file=sys.stderr)
        return 1
    total: Counter[str] = Counter()
    print(
        f"{'module':45} {'mutants':>7} {'killed':>7} {'survived':>8} {'no tests':>8} {'score':>7}"
    )
    for module in sorted(by_module):
        counts = by_module[module]
        total.update(counts)
        print(_row(module, counts))
    print(_row("TOTAL", total))
    unchecked = sum(total[status] for status in NOT_RUN)
    if unchecked:
        print(f"{unchecked} mutants not checked (run incomplete?)")
    return 0


def _row(name: str, counts: Counter[str]) -> str:
    killed = sum(counts[status] for status in KILLED)
    scored = sum(n for status, n in counts.items() if status not in NOT_RUN)
    score = f"{100 * killed / scored:6.1f}%" if scored else "    n/a"
    return (
        f"{name:45} {scored:7d} {killed:7d} {counts['survived']:8d} {counts['no tests']:8d} "
        f"{score:>7}"
    )


if __name__ == "__main__":
    sys.exit(main())
