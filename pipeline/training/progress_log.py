"""The training curve of a training stage, logged as it goes: one JSON object a line
(``metrics.jsonl``: ``step``, ``elapsed_s`` (trained seconds, counted across resumes), ``time``
(Unix time of the line), ``loss``, ``psnr`` (of the step's batch), ``lr`` and whatever else the
loop passes) at step 1, every multiple of ``every_steps``, after ``every_s`` trained seconds
without a line, and at the last step.

The file lives in the stage's resume folder so that it survives an interruption like the
checkpoint does: on resuming from step S the lines past S (logged after the checkpoint, about to
be redone) are dropped, and a fresh start (no checkpoint, or one set aside) starts a new file.
When the stage completes the runner keeps the file in the stage's output folder
(``W/<stage>/metrics.jsonl``), where the report reads it (``pipeline.report.training``).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

FILE_NAME = "metrics.jsonl"
# a line every EVERY_STEPS steps or EVERY_S trained seconds: ~1 line a second on a slow CPU run, a
# few thousand lines (a few hundred KB) for a 10-minute GPU run
EVERY_STEPS = 50
EVERY_S = 1.0


class ProgressLog:
    """Appends lines to ``folder/metrics.jsonl``; ``folder`` None logs nothing (a loop run without
    a resume folder)."""

    def __init__(self, folder: Optional[Path], start_step: int = 0, start_elapsed: float = 0.0,
                 every_steps: Optional[int] = None, every_s: Optional[float] = None):
        self.every_steps = max(1, EVERY_STEPS if every_steps is None else every_steps)
        self.every_s = EVERY_S if every_s is None else every_s
        self.last_step, self.last_elapsed = start_step, start_elapsed
        self.path = Path(folder) / FILE_NAME if folder is not None else None
        self._file = None
        if self.path is None:
            return
        kept = read_progress_log(self.path, max_step=start_step) if start_step > 0 else []
        # rewrite, not append: drop the lines after the checkpoint (or all, on a fresh start)
        with open(self.path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in kept)
        self._file = open(self.path, "a")

    def due(self, step: int, elapsed: float, last: bool = False) -> bool:
        """Whether the line of ``step`` should be written (call before computing costly values)."""
        if self._file is None or step <= self.last_step:
            return False
        return (last or step == 1 or step % self.every_steps == 0  # the same steps after a resume
                or elapsed - self.last_elapsed >= self.every_s)

    def write(self, step: int, elapsed: float, **values) -> None:
        if self._file is None:
            return
        row = {"step": int(step), "elapsed_s": round(float(elapsed), 4), "time": round(time.time(), 3)}
        for key, value in values.items():
            value = float(value)
            row[key] = value if math.isfinite(value) else None  # standard JSON: a diverged loss as null
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()  # a kill keeps every line written so far
        self.last_step, self.last_elapsed = step, elapsed

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_progress_log(path: Path, max_step: Optional[int] = None) -> list[dict]:
    """The lines of a ``metrics.jsonl`` (up to ``max_step``), skipping a torn last line of a killed run."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and (max_step is None or row["step"] <= max_step):
            rows.append(row)
    return rows
