"""Bounded memory: doubling the corpus does not grow the peak RSS of any process much (slow)."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import psutil
import pytest
from test_clean_data import near_duplicate, prose

from dapt.pipeline.config import load_config
from dapt.pipeline.stages import run_stage


def _corpus(path: Path, mb: float, seed: int) -> None:
    rng = random.Random(seed)
    size = 0
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "a.jsonl", "w", encoding="utf-8") as f:
        prev = None
        while size < mb * 1e6:
            t = near_duplicate(prev, rng) if prev and rng.random() < 0.1 else prose(rng, paragraphs=4)
            prev = t
            line = json.dumps({"text": t})
            f.write(line + "\n")
            size += len(line) + 1


class PeakRSS:
    """Samples the RSS of this process and all its descendants (the local Ray workers)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for p in [me, *me.children(recursive=True)]:
                try:
                    self.peak = max(self.peak, p.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.1)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_corpus_size(tmp_path, ray_local):
    peaks = {}
    for mb in (6, 12):
        corpus = tmp_path / f"c{mb}"
        _corpus(corpus, mb, seed=mb)
        cfg = tmp_path / f"c{mb}.yaml"
        cfg.write_text(
            f"""name: mem{mb}
run_dir: {tmp_path / f"run{mb}"}
sources: [{{name: a, kind: domain, paths: ["{corpus}/a.jsonl"]}}]
model: {{from_config: {{}}}}
clean: {{shard_mb: 1.5, batch_docs: 200}}
""",
            encoding="utf-8",
        )
        with PeakRSS() as p:
            m = run_stage(load_config(cfg), "clean", echo=None)
        assert m["totals"]["docs_in"] == m["totals"]["kept"] + m["totals"]["rejected"]
        assert m["dedup"]["near_edges"] > 0
        peaks[mb] = p.peak
    # per-process peak: twice the input must not mean anywhere near twice the memory
    assert peaks[12] < 1.25 * peaks[6], peaks
