"""The report's sections and renderers in isolation: the registry, the Jinja HTML (escaped), the
Markdown, the plan-vs-measured rows and the number formatting."""

from __future__ import annotations

from pathlib import Path

from test_report_upstream import SECTION_IDS, split_manifest, tokenizer_manifest, write_config

from dapt.eval.report import doc, render, results, sections
from dapt.eval.report.collect import RunData
from dapt.eval.report.config import ReportConfig
from dapt.eval.report.doc import Bullets, Figure, Para, Pre, Section, Table
from dapt.eval.report.sections import conclusions, plan, tokenizer
from dapt.pipeline.config import load_config

REPORT_DIR = Path(sections.__file__).resolve().parents[1]


def _data(tmp_path: Path, **manifests: dict) -> RunData:
    cfg = load_config(write_config(tmp_path, tmp_path / "run"))
    return RunData(run_name="r", cfg=cfg, manifests=dict(manifests))


def test_registry_is_the_report_order_and_modules_stay_small(tmp_path: Path) -> None:
    assert sections.SECTION_IDS == SECTION_IDS
    # the sweep section follows the mix, only when the mix fraction came from `dapt sweep`
    assert [sid for sid, _ in sections.REGISTRY] == [*SECTION_IDS[:3], "sweep", *SECTION_IDS[3:], "notes"]
    secs, concl = sections.build(_data(tmp_path), ReportConfig())
    assert [s.id for s in secs] == SECTION_IDS  # no sweep; nothing missing in RunData.problems: no notes
    assert concl == []
    for f in sorted((REPORT_DIR / "sections").glob("*.py")):
        assert len(f.read_text().splitlines()) < 400, f.name
    templates = {p.name for p in (REPORT_DIR / "templates").iterdir()}
    assert {"report.html.jinja", "blocks.html.jinja", "model_card.md.jinja", "report.css"} <= templates


def test_html_escapes_every_recorded_string() -> None:
    """Autoescape is on: a source name or an error message cannot inject markup into the report."""
    evil = '<script>alert("x")</script>&'
    s = Section("data", "Data <b>").add(
        Para(evil),
        Para(evil, kind="note"),
        Bullets([evil]),
        Table(["h<", "n"], [[evil, "1"]], caption=evil),
        Pre(evil, caption=evil),
        Figure("f.png", b"\x89PNG", evil),
    )
    html = render.to_html(evil, evil, [s], evil)
    assert "<script" not in html and "&lt;script&gt;" in html
    assert "<title>&lt;script&gt;" in html and '<a href="#data">Data &lt;b&gt;</a>' in html
    assert '<p class="note">&lt;script&gt;' in html and "<th>h&lt;</th>" in html
    assert '<td class="n">1</td>' in html and "<td>&lt;script&gt;" in html
    assert 'src="data:image/png;base64,iVBORw=="' in html
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")


def test_markdown_rendering_of_each_block() -> None:
    t = Table(["a", "b|c"], [["x_y", "1"]], caption="cap*")
    assert render.md_table(t) == "**cap\\***\n\n| a | b\\|c |\n|---|---:|\n| x\\_y | 1 |"
    assert render.block_md(Para("n", kind="note")) == "*n*"
    assert render.block_md(Bullets(["a", "b"])) == "- a\n- b"
    assert render.block_md(Pre("x ```", caption="c")) == "**c**\n\n~~~~text\nx ```\n~~~~"
    md = render.to_markdown("T", "S", [Section("x", "X").add(Para("p"))], "F")
    assert md == 'T\n\nS\n\nContents: [X](#x)\n\n<a id="x"></a>\n\n## X\n\np\n\n---\n*F*\n'.replace(
        "T", "# T", 1
    )


def test_tokenizer_section_shows_what_it_was_fitted_on(tmp_path: Path) -> None:
    m = tokenizer_manifest(tmp_path)
    assert tokenizer.trained_on_text(m) == "train split: 1,640 documents (120 held-out documents excluded)"
    assert tokenizer.trained_on_text({}) == doc.NR
    data = _data(tmp_path, tokenizer=m, split=split_manifest())
    secs, _ = sections.build(data, ReportConfig())
    tok = next(s for s in secs if s.id == "tokenizer")
    kv = dict(tuple(r) for r in tok.blocks[0].rows)
    assert kv["Fitted on"] == "train split: 1,640 documents (120 held-out documents excluded)"
    assert kv["Held-out ids kept out of fitting"].endswith("heldout_ids.txt")
    funnel = next(s for s in secs if s.id == "data")
    held = [b for b in funnel.blocks if isinstance(b, Table) and "Held-out" in (b.caption or "")]
    assert held and held[0].rows == [["fin", "domain", "20", "40"], ["wiki", "general", "20", "40"]]


def test_plan_vs_measured_on_cpu_is_not_compared(tmp_path: Path) -> None:
    """On CPU the trainer measures process RSS and the plan predicts GPU tensor memory and GPU time:
    the rows are shown with a note, never as a ratio or a conclusion."""
    data = _data(tmp_path)
    data.n_params = 1000
    data.manifests["train"] = {
        "device": "cpu",
        "tokens": 3072,
        "tokens_per_s": 40.0,
        "train_seconds": 77.0,
        "peak_memory_bytes": 600 << 20,
        "plan": {
            "memory": {"inputs": {"params": 1000}, "total": 7 << 20},
            "compute": {"tokens": 15360, "wall_clock_hours": 1e-7, "mfu": 0.4},
            "gpu": {"name": "H100-80GB"},
        },
    }
    rows = {r["label"]: r for r in plan.plan_rows(data)}
    assert rows["Parameters"]["comparable"]
    for label in ("Peak memory per worker", "Throughput (tokens/s)", "Training time"):
        assert not rows[label]["comparable"], label
        assert "H100-80GB" in rows[label]["note"] or "RSS" in rows[label]["note"]
    assert rows["Training tokens"]["comparable"]  # a real ratio, with a note on why it differs
    assert "different number of tokens" in rows["Training tokens"]["note"]
    assert conclusions.conclusions(data, 0.05) == [
        "Parameters: measured 1,000 vs planned 1,000 (1.00x).",
        "Training tokens: measured 3,072 vs planned 15,360 (0.20x).",
    ]


def test_number_formatting_never_hides_or_invents() -> None:
    assert results.small_pct(2.3e-7) == "2.3e-05%" and results.small_pct(0.00456) == "0.46%"
    assert doc.fmt_bytes(734_003_200) == "700.00 MiB" and doc.fmt_count(245_760) == "246k"
    assert doc.fmt_seconds(0.00043) == "0.00043 s" and doc.fmt_seconds(161.3) == "2.7 min"
    assert doc.fmt_sig(1523.4) == "1,523" and doc.fmt_p(0.0004) == "<0.001"
    for f in (
        doc.fmt_int,
        doc.fmt_float,
        doc.fmt_bytes,
        doc.fmt_pct,
        doc.fmt_frac,
        doc.fmt_seconds,
        doc.fmt_p,
    ):
        assert f(None) == f(float("nan")) == f("n/a") == doc.NR
