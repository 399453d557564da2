"""Two zoo runs' numbers, leaf by leaf: every value of each model's
record in summary.json (results, evaluation, config) that differs,
timings and provenance aside. How the registries and estimator changes
were checked against the code before them:

    python benchmarks/compare_summaries.py runs/before/summary.json \
        runs/after/summary.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

# What a rerun cannot reproduce, or what names the run rather than its
# numbers.
SKIP = {"seconds", "created", "timings", "train_seconds", "epoch_seconds",
        "epoch_times", "versions", "command", "trained_by", "notes",
        "images_per_second", "figures"}


def differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(path, a's value, b's value) for every leaf that differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) if k not in SKIP
                for d in differences(a.get(k, "<missing>"),
                                     b.get(k, "<missing>"), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [(path, a, b)]


def main() -> None:
    before, after = (json.load(open(p)) for p in sys.argv[1:3])
    models = {m["name"]: m for m in after["models"]}
    found = [d for m in before["models"]
             for d in differences(m, models.get(m["name"], {}), m["name"])]
    for path, x, y in found:
        change = (f" ({y - x:+.4g})" if isinstance(x, float)
                  and isinstance(y, float) else "")
        print(f"{path}: {x} -> {y}{change}")
    print(f"{len(found)} differences")


if __name__ == "__main__":
    main()
