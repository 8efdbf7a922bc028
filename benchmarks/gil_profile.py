"""Who holds the GIL in a `geoseg run`: py-spy's GIL samples, by pipeline stage.

    py-spy record --gil --threads -r 50 --format raw -o gil.txt -- python -m geoseg run ...
    python -m benchmarks.gil_profile gil.txt [--top 15]

On a GPU node the model is not the limit: the host's threads share one GIL, so the share of
wall time each stage holds it bounds the chunks per second. Prints per stage the share of the
run's samples that held the GIL (py-spy is not part of geoseg's install: ``pip install py-spy``).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# the first of these function names found in a stack (leaf first) names its stage
STAGES = (("_find_and_load", "imports"), ("read_chunk", "read"), ("predict_chunk", "predict"),
          ("write_output", "write"), ("vectorize", "vectors"), ("gpkg", "geopackage"),
          ("load_models", "model load"), ("export", "exports"), ("chunk_done", "driver: record"),
          ("LocalBackend.run", "driver: scheduling"), ("run_job", "job (setup, finish)"))


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        name = frame.split(" (", 1)[0]
        for key, stage in STAGES:
            if key in name:
                return stage
    return "other"


def summarize(raw: Path) -> tuple[int, Counter[str], Counter[str]]:
    """(samples that held the GIL, samples by stage, samples by leaf function) of a raw
    py-spy profile."""
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")[1:]  # the first is the thread
        total += n
        stages[stage_of(frames)] += n
        leaves[frames[-1] if frames else "?"] += n
    return total, stages, leaves


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("raw", type=Path, help="py-spy record --format raw output")
    p.add_argument("--top", type=int, default=15, help="leaf functions to list")
    a = p.parse_args()
    total, stages, leaves = summarize(a.raw)
    print(f"{total} samples holding the GIL")
    for stage, n in stages.most_common():
        print(f"  {stage:24s} {n / max(1, total):6.1%}")
    print("leaf functions:")
    for leaf, n in leaves.most_common(a.top):
        print(f"  {n / max(1, total):6.1%}  {leaf}")


if __name__ == "__main__":
    main()
