"""The full profile's code paths on a CPU: every chapter at `profile=full` and a tiny budget, through the same
scripts `ptm gpu-check` runs on a GPU, under bf16 autocast (`PTM_CPU_BF16=1`). Full widths, data sizes,
knobs and dtypes all run, so a shape, knob or dtype error in a full-only path fails here; failed claims are
expected at 1% of the training. Device mismatches (a CPU tensor meeting a CUDA one) need a GPU: `ptm gpu-check`.
The chapters are split over four test files, test_full_profile_[a-d].py, so that pytest-xdist (--dist loadfile)
runs four at once."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 0.01
LIMIT_S = 900  # each chapter, on a 2-core CPU; the slowest (science/time_series, icl/task_diversity) take 430-500 s


SPLIT = 4  # the number of test_full_profile_*.py files


def chapters(part: int) -> list[str]:
    """Every SPLIT-th chapter of the book from `part` on."""
    from ptmlib.book.runner import chapter_ids

    return chapter_ids(ROOT)[part::SPLIT]


def run_full_tiny(chapter: str, tmp_path: Path) -> None:
    from ptmlib.book import gpu

    gpu.pack(ROOT, [chapter], tmp_path / "scripts")
    env = {**os.environ, "PTM_CPU_BF16": "1"}
    proc = subprocess.run([sys.executable, "-m", "ptmlib.book.gpu", "run", str(tmp_path / "scripts"), chapter,
                           "--out", str(tmp_path / "out"), "--budget", str(BUDGET), "--deadline", str(LIMIT_S)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    row = json.loads((tmp_path / "out" / "summary.json").read_text())["chapters"][0]
    log = (tmp_path / "out" / f"{chapter}.log").read_text(errors="replace").splitlines()
    assert row["status"] in ("ok", "claims failed"), f"{chapter} at full, budget {BUDGET}: {row['status']} " \
        f"after {row['wall_s']} s: {row['error']}\n" + "\n".join(log[-25:]) + proc.stderr[-2000:]
    assert row["claims_total"] > 0
