"""The shipped public financial task YAMLs (eval/tasks/finance/) run end to end through lm-eval.

Their datasets live on the HF hub (TheFinAI/flare-*), which this machine cannot reach. Each YAML is run
unchanged except for ``dataset_path``, pointed at a small local JSONL file written in the FLARE schema
(``id, query, answer, text, choices, gold``, splits ``train``/``test``, as on the dataset cards), so the
prompt fields, few-shot split, ``!function`` metrics and aggregations are exercised for real.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import make_tiny_llama

from dapt.eval.tasks_registry import SHIPPED_TASKS, with_local_data

SENTIMENT = ["negative", "neutral", "positive"]
SENTENCES = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period.",
    "The company expects net sales to remain at the previous year's level.",
    "Shares fell sharply after the bank reported a quarterly loss.",
    "Revenue for the quarter increased by twelve percent year on year.",
    "The board proposed a dividend of EUR 0.50 per share.",
    "Gold prices slipped as the dollar strengthened against major currencies.",
]


def _rows(task: str, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        text = SENTENCES[i % len(SENTENCES)]
        if task in {"fin_fpb", "fin_fiqa_sa"}:
            gold = i % 3
            query = f"Analyze the sentiment of this statement.\nText: {text}\nAnswer:"
            rows.append(
                {
                    "id": str(i),
                    "query": query,
                    "answer": SENTIMENT[gold],
                    "text": text,
                    "choices": SENTIMENT,
                    "gold": gold,
                }
            )
        elif task == "fin_headline":
            gold = i % 2
            query = f"Does the news headline talk about price going up?\nText: {text}\nAnswer:"
            rows.append(
                {
                    "id": str(i),
                    "query": query,
                    "answer": ["No", "Yes"][gold],
                    "text": text,
                    "choices": ["No", "Yes"],
                    "gold": gold,
                }
            )
        elif task == "fin_ner":
            answer = "Acme Bank, ORG\nJohn Smith, PER" if i % 2 else "Helsinki, LOC"
            query = f"Identify the named entities (PER, ORG, LOC).\nText: {text}\nAnswer:"
            rows.append(
                {"id": str(i), "query": query, "answer": answer, "text": text, "choices": [], "gold": 0}
            )
        else:  # fin_convfinqa
            query = f"{text}\nQuestion: what was the change in percent?\nAnswer:"
            rows.append(
                {"id": str(i), "query": query, "answer": str(12 + i), "text": text, "choices": [], "gold": 0}
            )
    return rows


@pytest.fixture(scope="module")
def local_finance_tasks(tmp_path_factory) -> Path:
    """A copy of eval/tasks/finance/ whose dataset_path lines point at local FLARE-schema files."""
    root = tmp_path_factory.mktemp("fin_tasks")
    dest = root / "finance"
    shutil.copytree(SHIPPED_TASKS / "finance", dest, ignore=shutil.ignore_patterns("__pycache__"))
    for yaml in dest.glob("fin_*.yaml"):
        task = yaml.stem
        files = {}
        for split, n in (("train", 24), ("test", 6)):
            f = root / "data" / task / f"{split}.jsonl"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("".join(json.dumps(r) + "\n" for r in _rows(task, n)), encoding="utf-8")
            files[split] = f
        text = yaml.read_text(encoding="utf-8")
        assert len(re.findall(r"^dataset_path: TheFinAI/flare-[a-z]+\n", text, flags=re.M)) == 1, yaml
        yaml.write_text(with_local_data(text, files), encoding="utf-8")
    return root


def test_public_finance_tasks_run_with_flare_schema(local_finance_tasks, sp_tokenizer_dir):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import get_task_dict
    from transformers import AutoTokenizer

    from dapt.eval.compare import task_rows
    from dapt.eval.harness import task_results
    from dapt.eval.lm_backend import DaptLM
    from dapt.eval.tasks_registry import seeds, task_manager

    tok = AutoTokenizer.from_pretrained(sp_tokenizer_dir)
    model = make_tiny_llama(len(tok), seed=11).eval()
    tm = task_manager(local_finance_tasks, include_defaults=False)
    names = ["fin_fpb", "fin_fiqa_sa", "fin_headline", "fin_ner", "fin_convfinqa"]
    assert set(names) <= set(tm.all_tasks)
    lm = DaptLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=512)
    res = simple_evaluate(
        model=lm,
        tasks=names,
        task_manager=tm,
        limit=4,
        bootstrap_iters=0,
        log_samples=True,
        **seeds(0),
        gen_kwargs="max_gen_toks=8",
    )
    r = res["results"]
    for t in ("fin_fpb", "fin_fiqa_sa", "fin_headline"):
        assert 0.0 <= r[t]["acc,none"] <= 1.0 and 0.0 <= r[t]["f1,none"] <= 1.0, r[t]
        assert res["n-shot"][t] == 5  # BloombergGPT's 5-shot, drawn from the train split
    assert 0.0 <= r["fin_ner"]["entity_f1,none"] <= 1.0 and res["n-shot"]["fin_ner"] == 20
    assert 0.0 <= r["fin_convfinqa"]["numeric_acc,none"] <= 1.0
    # The few-shot prompt really holds FLARE queries from the train split.
    first = res["samples"]["fin_fpb"][0]["arguments"][0][0]
    assert first.count("Analyze the sentiment") == 6

    # weighted F1 and entity F1 are corpus-level: the stage keeps their raw items and lm-eval's
    # aggregation, so the comparison table gets a paired bootstrap for them too.
    leaves = get_task_dict(names, tm)
    per = task_results(res, leaves)
    assert set(per["fin_fpb"]["corpus"]) == {"f1"} and set(per["fin_ner"]["corpus"]) == {"entity_f1"}
    assert per["fin_fpb"]["corpus"]["f1"]["fn"](list(per["fin_fpb"]["corpus"]["f1"]["items"].values())) == (
        pytest.approx(r["fin_fpb"]["f1,none"])
    )
    # 4 items (limit=4): alpha 0.2 is the strictest level 4 paired items can test (eval/compare.py,
    # min_paired_items); at 0.05 these rows would be reported untested
    rows = task_rows({"base": per, "adapted": per}, iters=100, alpha=0.2, seed=0)
    tested = {(row["task"], row["metric"]) for row in rows if row["p_value"] is not None}
    assert {("fin_fpb", "f1"), ("fin_ner", "entity_f1"), ("fin_fpb", "acc")} <= tested


def test_decontamination_texts_include_the_few_shot_pool(tmp_path):
    """Issue 19, item 6: the items handed to the mix stage's decontamination include the few-shot
    examples. The shipped financial tasks draw them from ``train`` (not test or validation), so a train
    item that only ever appears as a 5-shot example must be in the texts too."""
    from dapt.eval.tasks_data import task_texts

    src = SHIPPED_TASKS / "finance"
    dest = tmp_path / "tasks" / "local"
    dest.mkdir(parents=True)
    for name in ("_mc_common.yaml", "utils.py", "__init__.py"):
        shutil.copyfile(src / name, dest / name)
    files = {}
    for split, n in (("train", 8), ("test", 3)):
        rows = _rows("fin_fpb", n)
        if split == "train":  # text that occurs nowhere else
            for i, r in enumerate(rows):
                r["query"] = f"Analyze the sentiment.\nText: few-shot-only example number {i} zebra\nAnswer:"
        f = tmp_path / "data" / f"{split}.jsonl"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        files[split] = f
    text = (src / "fin_fpb.yaml").read_text(encoding="utf-8").replace("task: fin_fpb", "task: local_fpb")
    (dest / "local_fpb.yaml").write_text(with_local_data(text, files), encoding="utf-8")

    texts = task_texts(["local_fpb"], task_dirs=[tmp_path / "tasks"])["local_fpb"]
    fewshot = [t for t in texts if "few-shot-only example" in t]
    assert len(fewshot) == 8  # every train item: the sampler may show any of them
    assert len(texts) == 8 + 3
    assert all(t.endswith("negative neutral positive") for t in fewshot)  # with the choices
