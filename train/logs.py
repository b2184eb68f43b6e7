"""What a worker reports: metrics / monitor rows (JSONL + TensorBoard), the progress bar, peak memory."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import torch

from dapt.pipeline.tracking import StepLogger, TrackingTarget


def peak_memory(device: torch.device) -> int:
    """CUDA max allocated bytes, or the process's max RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


class Writers:
    """Rank-0 JSONL + TensorBoard writers that survive resumption: rows after the resumed step are
    dropped (they belong to the attempt that crashed) and TensorBoard purges them too."""

    def __init__(
        self,
        log_dir: Path,
        resume_step: int,
        enabled: bool,
        tracking: dict[str, Any] | None = None,
        tensorboard: bool = True,
    ):
        self.enabled = enabled
        self.metrics = log_dir / "metrics.jsonl"
        self.monitor = log_dir / "monitor.jsonl"
        self.tb = None
        self.tracker = None
        if not enabled:
            return
        if tracking:  # the stage's child run in MLflow / W&B (pipeline/tracking.py); failures only warn
            self.tracker = StepLogger(TrackingTarget(**tracking))
        log_dir.mkdir(parents=True, exist_ok=True)
        for f in (self.metrics, self.monitor):
            keep = []
            if f.exists() and resume_step > 0:
                for line in f.read_text().splitlines():
                    if line.strip() and json.loads(line)["step"] <= resume_step:
                        keep.append(line)
            f.write_text("".join(x + "\n" for x in keep))
        if not tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(log_dir / "tb"), purge_step=resume_step if resume_step > 0 else None)
        except ImportError:  # tensorboard is a declared dependency; stay usable without it
            self.tb = None

    def write(self, kind: str, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.metrics if kind == "metrics" else self.monitor, "a") as f:
            f.write(json.dumps(row) + "\n")
        prefix = "train" if kind == "metrics" else "monitor"
        if self.tracker is not None:
            self.tracker.log(prefix, row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float) and v is not None:
                    self.tb.add_scalar(f"{prefix}/{k}", v, row["step"])

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def progress_bar(enabled: bool, total: int, initial: int, under_ray: bool):
    """A tqdm bar on rank 0 (Ray's, forwarded to the driver, under Ray Train); None when disabled."""
    if not enabled:
        return None
    try:
        if under_ray:
            # Ray's tqdm forwards the bar to the driver; it has no ``initial``, so advance it instead.
            from ray.experimental.tqdm_ray import tqdm as ray_tqdm

            bar = ray_tqdm(total=total, desc="train", unit="step")
            if initial:
                bar.update(initial)
            return bar
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc="train", unit="step")
    except ImportError:
        return None
