"""The evidence report rebuilt from committed result files only (`make report`), on the committed fixture
tests/fixtures/results (synthetic numbers, see its make_fixture.py), and the paper's published rows."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from src.report import main
from src.reports.paper import published, row_values

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "results"
PAPER = REPO.parent / "shared" / "paper"
SETS5 = ["Set5", "Set14", "BSD100", "Manga109", "Urban100"]


def _expected_diffs(protocol: str, metric: str) -> dict:
    """variant minus baseline per (set, degradation, image), each averaged over its seeds: from the files."""
    name = "results.json" if protocol == "literature" else "results_official.json"
    sides = {}
    for job in sorted((FIXTURE / "mini").iterdir()):
        res = json.loads((job / name).read_text())
        for s, degs in res.items():
            for d, cell in degs.items():
                for img, v in cell["per_image"].items():
                    sides.setdefault(job.name.split("_")[0], {}).setdefault((s, d, img), []).append(v[metric])
    return {k: np.mean(sides["p0.7"][k]) - np.mean(v) for k, v in sides["p0"].items()}


def _exact_wilcoxon_p(x: np.ndarray) -> float:
    """Two-sided exact signed-rank p-value by enumerating all 2^n sign assignments (n small, no ties)."""
    ranks = np.argsort(np.argsort(np.abs(x))) + 1
    t = ranks[x > 0].sum()
    centre = len(x) * (len(x) + 1) / 4
    signs = (np.arange(2 ** len(x))[:, None] >> np.arange(len(x))) & 1
    totals = signs @ ranks
    return float(np.mean(np.abs(totals - centre) >= abs(t - centre) - 1e-9))


def test_make_report_rebuilds_tables_and_figures_from_committed_files(tmp_path, capsys):
    makefile = (REPO / "Makefile").read_text()
    # every study folder the scorecard reads, each once it is published
    assert re.search(r"^STUDIES := \$\(RESULTS\)/repro_small_kornia \$\(wildcard \$\(addprefix \$\(RESULTS\)/,"
                     r"repro_small repro_probabilities repro_positions repro_rrdb repro_bicubic\)\)$", makefile, re.M)
    assert re.search(r"^report:.*\n\t\$\(PY\) -m src.report \$\(STUDIES\) out=\$\(RESULTS\) readme=README.md\n"
                     r"\t.*src.analyze merge sources=\[\$\(INTERP\)\] out=\$\(RESULTS\)/interp_seeds", makefile, re.M)
    out = tmp_path / "results"
    assert main([str(FIXTURE / "mini"), f"out={out}"]) == 0
    printed = capsys.readouterr().out
    for name in ("table1.md", "table1_official.md", "comparison.csv", "comparison_official.csv", "report.md",
                 "gains_Real_SRResNet_official.png", "curves_Real_SRResNet.png"):
        assert (out / name).is_file() and name in printed, name

    md = (out / "table1_official.md").read_text()
    assert "| Bicubic (reference) |" in md and "[mean of 3 seeds]" in md and "paper: Real-SRResNet (p=0.7)" in md
    report = (out / "report.md").read_text()
    assert "num_block 4; 2,000 iterations; T91+BSD200" in report and "16 residual blocks, 1.5M parameters" in report

    for protocol, metric, suffix in (("literature", "psnr", ""), ("official", "psnr_rgb", "_official")):
        diffs = _expected_diffs(protocol, metric)
        (row,) = list(csv.DictReader((out / f"comparison{suffix}.csv").open()))
        assert int(row["items"]) == len(diffs) == 9 * 8
        assert int(row["improved"]) == sum(v > 0 for v in diffs.values())
        assert float(row["mean_diff"]) == pytest.approx(np.mean(list(diffs.values())), abs=1e-5)
        per_image = {}
        for (s, d, img), v in diffs.items():
            per_image.setdefault((s, img), []).append(v)
        means = np.array([np.mean(v) for v in per_image.values()])
        assert int(row["images_improved"]) == int((means > 0).sum())
        assert float(row["wilcoxon_p"]) == pytest.approx(_exact_wilcoxon_p(means), rel=1e-6)
        section = report.split(f"Is the gain larger than the noise? ({protocol} protocol)")[1]
        assert section.split("\n\n")[3].startswith(f"**{row['comparison']}: ")   # the seed-level headline leads
        assert "Secondary, per image (conditions on these 6 trained models" in section


def test_papers_improvement_rows_match_its_model_rows():
    for name, table in published()["tables"].items():
        rows = table["rows"]
        for i, row in enumerate(rows):
            if row.get("improvement"):
                base = next(r for r in rows[:i] if r["backbone"] == row["backbone"] and r["position"] == "none")
                with_ = row_values(rows[i - 1])
                for s, degs in row_values(row).items():
                    for d, v in degs.items():
                        assert v == pytest.approx(with_[s][d] - row_values(base)[s][d], abs=0.0101), (name, s, d)


def _numbers(text: str) -> list[float]:
    """Two-decimal numbers in reading order (parameter counts like 16.7M are not table values)."""
    return [float(x) for x in re.findall(r"(?<![\w.])[+-]?\d+\.\d\d(?![\dM%])", text)]


def _main_layout(rows: list[dict]) -> list[float]:
    """The order the paper's text lists Table 1 / A.1: per set the clean/blur pairs of every column, then per
    degradation pair (noise/jpeg, b+n/b+j, n+j/b+n+j), per set, one line of every column per degradation."""
    vals = [row_values(r) for r in rows]
    seq = [v[s][d] for s in SETS5 for v in vals for d in ("clean", "blur")]
    for pair in (("noise", "jpeg"), ("b+n", "b+j"), ("n+j", "b+n+j")):
        seq += [v[s][d] for s in SETS5 for d in pair for v in vals]
    return seq


@pytest.mark.skipif(not PAPER.is_dir(), reason="../shared/paper is not on this machine")
def test_papers_published_rows_match_the_paper_text():
    (path,) = PAPER.glob("*.txt")
    text = path.read_text()
    tables = published()["tables"]

    start = text.index("Set5 [3]")
    assert _numbers(text[start:text.index("Table 1. The PSNR")]) == _main_layout(tables["table1"]["rows"])

    start = text.index("Set5 [3]", text.index("Real-SwinIR (p=0)"))
    assert _numbers(text[start:text.index("Table A.1. The PSNR")]) == _main_layout(tables["table_a1"]["rows"])

    seg = text[text.index("Prob."):text.index("plex mixed degradations", text.index("Prob."))]
    a2 = [row_values(r) for r in tables["table_a2"]["rows"]]
    assert _numbers(seg) == [v[s]["noise"] for v in a2 for s in ("Manga109", "Urban100")]
    assert [r["p"] for r in tables["table_a2"]["rows"]] == [0.0, 0.1, 0.3, 0.5, 0.7, 0.9]

    b3_caption = text.index("Table B.3. The PSNR")
    start = text.rindex("all (p=0.7)", 0, b3_caption)
    b3 = [row_values(r) for r in tables["table_b3"]["rows"]]
    expected = [v[s][d] for s in SETS5 for pair in (("clean", "blur"), ("noise", "jpeg"), ("b+n", "b+j"),
                                                    ("n+j", "b+n+j")) for v in b3 for d in pair]
    assert _numbers(text[start:b3_caption]) == expected
    assert all(r["label"] in text[start - 2000:start] for r in tables["table_b3"]["rows"])


def test_publish_copies_small_files_of_finished_runs_and_reports_from_them(tmp_path, capsys):
    import shutil

    import torch

    from src.models.loading import build_backbone

    backbone = {"_target_": "src.models.srresnet.MSRResNet", "num_feat": 8, "num_block": 1}
    torch.manual_seed(0)
    net = build_backbone(backbone, scale=4)
    sweep = tmp_path / "runs" / "sweep"
    for job in sorted((FIXTURE / "mini").iterdir()):
        shutil.copytree(job, sweep / job.name)
        (sweep / job.name / "checkpoints").mkdir()
        # the checkpoint itself is never published: its weights are, exported to safetensors
        torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                    "hyper_parameters": {"backbone": backbone}, "optimizer_states": [b"x" * 600_000]},
                   sweep / job.name / "checkpoints" / "last.ckpt")
    unfinished = sweep / "p0.7_seed-9"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((sweep / job.name / "config.yaml").read_text())
    dest, out = tmp_path / "docs" / "campaign", tmp_path / "report"
    with pytest.warns(UserWarning, match="p0.7_seed-9: no results file yet"):
        assert main([str(sweep), f"publish={dest}", f"out={out}", f"bicubic={FIXTURE / 'bicubic'}"]) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in (FIXTURE / "mini").iterdir())
    from src.models.loading import load

    for job in (FIXTURE / "mini").iterdir():
        assert {p.name for p in (dest / job.name).iterdir()} == {p.name for p in job.iterdir()} | {
            "weights.safetensors"}
        assert (dest / job.name / "results.json").read_bytes() == (job / "results.json").read_bytes()
        weights = load(dest / job.name / "weights.safetensors").model.state_dict()
        assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    assert "published:" in capsys.readouterr().out and (out / "table1.md").is_file()
    assert f"# Report: {dest}" in (out / "report.md").read_text()  # built from the published copy

    (sweep / job.name / "metrics.csv").write_bytes(b"0" * 600_000)
    with pytest.raises(ValueError, match=r"metrics.csv \(600,000 bytes\)"):
        main([str(sweep), f"publish={dest}", f"out={out}"])

    # a run still evaluating (its process holds the folder's lock) waits for the next publish
    from src import runs

    (sweep / job.name / "metrics.csv").write_bytes(b"step\n")
    shutil.rmtree(dest)
    with runs.lock(sweep / job.name), pytest.warns(UserWarning, match=rf"{job.name}: still running \(PID \d+"):
        main([str(sweep), f"publish={dest}", f"out={out}", f"bicubic={FIXTURE / 'bicubic'}"])
    assert job.name not in {p.name for p in dest.iterdir()} and len(list(dest.iterdir())) == 5
    # a half-written lock (its writer killed while taking it) is stale: the run is published, the lock left alone
    (sweep / job.name / runs.LOCK).write_text('{"pid": 12')
    main([str(sweep), f"publish={dest}", f"out={out}", f"bicubic={FIXTURE / 'bicubic'}"])
    assert (dest / job.name / "results.json").is_file() and (sweep / job.name / runs.LOCK).read_text() == '{"pid": 12'


def test_a_study_scored_under_one_protocol_only_stays_out_of_the_other_protocols_tables(tmp_path):
    import shutil

    src = tmp_path / "campaign"
    shutil.copytree(FIXTURE / "mini", src)
    for p in ("0.1", "0.9"):  # the probability study: the paper's protocol only
        run = src / f"p{p}_seed0"
        shutil.copytree(src / "p0.7_seed0", run)
        (run / "results.json").unlink()
        cfg = run / "config.yaml"
        cfg.write_text(cfg.read_text().replace("  p: 0.7\n", f"  p: {p}\n"))
    out = tmp_path / "out"
    assert main([str(src), f"out={out}", f"bicubic={FIXTURE / 'bicubic'}"]) == 0

    literature = list(csv.DictReader((out / "comparison.csv").open()))
    official = list(csv.DictReader((out / "comparison_official.csv").open()))
    assert [r["comparison"] for r in literature] == ["Real-SRResNet (p=0.7) [mean of 3 seeds] vs p=0"]
    assert len(official) == 3 and any("p=0.9" in r["comparison"] for r in official)
    assert "p=0.9" not in (out / "table1.md").read_text()
    assert "p=0.9" in (out / "table1_official.md").read_text()
    a2 = (out / "table_a2_Real_SRResNet_last_channel_official.md").read_text()
    assert all(f"p={p}" in a2 for p in ("0", "0.1", "0.7", "0.9"))
    assert not list(out.glob("table_a2_*_channel.md"))  # the literature protocol has only p = 0 and 0.7


def test_table_a2_is_one_table_per_campaign_with_its_own_baseline_and_the_papers_cells(tmp_path):
    """Two campaigns that differ in their training (not only in dropout) get a Table A.2 each, named after their
    baseline's folder, each p=0 column being that campaign's own baseline; the paper's two published cells
    (Manga109 and Urban100 under noise) follow as rows on the probabilities the campaign ran, and the cells this
    study did not score are named."""
    import shutil

    def add_p(folder, p):
        run = folder / f"p{p}_seed0"
        shutil.copytree(folder / "p0.7_seed0", run)
        (run / "results.json").unlink()
        cfg = run / "config.yaml"
        cfg.write_text(cfg.read_text().replace("  p: 0.7\n", f"  p: {p}\n"))

    mini, other = tmp_path / "mini", tmp_path / "other"
    shutil.copytree(FIXTURE / "mini", mini)
    shutil.copytree(FIXTURE / "mini", other)
    for job in other.iterdir():   # a second campaign: longer training, its baseline 1 dB higher
        cfg = job / "config.yaml"
        cfg.write_text(cfg.read_text().replace("max_steps: 2000", "max_steps: 4000"))
        if job.name.startswith("p0_"):
            res = json.loads((job / "results_official.json").read_text())
            for degs in res.values():
                for cell in degs.values():
                    cell["psnr_rgb"] += 1.0
            (job / "results_official.json").write_text(json.dumps(res))
    add_p(mini, "0.1")
    add_p(other, "0.9")
    out = tmp_path / "out"
    assert main([str(mini), str(other), f"out={out}", f"bicubic={FIXTURE / 'bicubic'}"]) == 0
    assert sorted(p.name for p in out.glob("table_a2_*_official.csv")) == [
        "table_a2_Real_SRResNet_last_channel_mini_official.csv", "table_a2_Real_SRResNet_last_channel_other_official.csv"]
    for folder, ps in ((mini, ["0", "0.1", "0.7"]), (other, ["0", "0.7", "0.9"])):
        rows = list(csv.reader((out / f"table_a2_Real_SRResNet_last_channel_{folder.name}_official.csv").open()))
        header = rows[0]
        assert header[:2] == ["row", "kind"] and [h.split("p=")[-1] for h in header[2:]] == ps
        clean = next(r for r in rows if r[0] == "Set5 clean")
        base = np.mean([json.loads((folder / f"p0_seed{s}" / "results_official.json").read_text())
                        ["Set5"]["clean"]["psnr_rgb"] for s in range(3)])
        assert float(clean[2]) == pytest.approx(base, abs=1e-4)
        paper = {r[0]: r[2:] for r in rows if r[1] == "paper"}
        published_a2 = {float(r["p"]): row_values(r) for r in published()["tables"]["table_a2"]["rows"]}
        assert list(paper) == ["paper: Manga109 noise", "paper: Urban100 noise"]
        assert [float(v) for v in paper["paper: Urban100 noise"]] == [published_a2[float(p)]["Urban100"]["noise"]
                                                                       for p in ps]
    md = (out / "table_a2_Real_SRResNet_last_channel_mini_official.md").read_text()
    assert "- the paper's Manga109 noise is not scored here" in md and "(campaign mini)" in md


def test_committed_results_and_weights_are_within_the_caps_that_publishing_enforces():
    """Files scored into a committed run folder after publishing (new columns, re-scoring) never passed the
    publish check; the committed tree must still hold to it. Step weights are kept by the SRResNet Table 1 pair
    only (the training-length claim); other studies commit their final weights."""
    from src.runs import PUBLISH_MAX_BYTES, WEIGHTS_MAX_BYTES

    results = sorted((REPO / "docs" / "results").rglob("results*.json"))
    weights = sorted((REPO / "docs" / "results").rglob("*.safetensors"))
    assert len(results) > 80 and len(weights) > 40
    assert [str(f) for f in results if f.stat().st_size > PUBLISH_MAX_BYTES] == []
    assert [str(f) for f in weights if f.stat().st_size > WEIGHTS_MAX_BYTES] == []
    steps = {f.relative_to(REPO / "docs" / "results").parts[0] for f in weights if f.parent.name == "checkpoints"}
    assert steps == {"repro_small"}
