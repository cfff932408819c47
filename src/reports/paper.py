"""The paper's published numbers (paper_results.yaml), for rows beside ours where the protocol is the paper's."""
from __future__ import annotations

import functools
from pathlib import Path

import yaml

DATA = Path(__file__).with_name("paper_results.yaml")


@functools.lru_cache(maxsize=1)
def published() -> dict:
    """The whole data file: protocol, metric, degradations, setting, tables."""
    return yaml.safe_load(DATA.read_text())


def row_values(row: dict, degradations: list[str] | None = None) -> dict[str, dict[str, float]]:
    """{set: {degradation: value}} of a published row (lists follow the file's `degradations`)."""
    degs = degradations if degradations is not None else published()["degradations"]
    out = {}
    for s, v in row["values"].items():
        out[s] = dict(zip(degs, v)) if isinstance(v, list) else dict(v)
    return out


def same_training(pipeline: str) -> bool:
    """Whether models trained with the degradation pipeline `pipeline` (its class name) compare with the published
    rows: every one of them was trained with Real-ESRGAN's second-order pipeline (`setting.degradation`), so a
    bicubic-trained model's row is not the paper's Real-SRResNet."""
    return "RealESRGAN" in pipeline


def paper_rows(table: str, backbone: str, settings: list[tuple[str, float]], protocol: str,
               metric: str, pipeline: str) -> list[tuple[str, dict, str]]:
    """[(label, {set: {deg: value}}, "paper" | "paper_delta")] of `table` for `backbone` whose (position, p)
    is among `settings`, each followed by its published Improvement; [] unless `protocol` and `metric` are the
    paper's (its numbers are RGB PSNR on its own test LR: beside anything else they would mislead) and the
    models were trained as the paper's were (`same_training`)."""
    data = published()
    if protocol != data["protocol"] or metric != data["metric"] or not same_training(pipeline):
        return []
    wanted = {(pos, round(float(p), 3)) for pos, p in settings}
    out, has_base, previous = [], False, None
    for row in data["tables"][table]["rows"]:
        key = (row["backbone"], row["position"], round(float(row["p"]), 3))
        if row["backbone"] != backbone or key[1:] not in wanted:
            previous = None
            continue
        if row.get("improvement"):
            if has_base and previous == key:  # the published Improvement of the row just shown
                out.append(("Improvement", row_values(row), "paper_delta"))
        else:
            out.append((row["label"], row_values(row), "paper"))
            has_base |= row["position"] == "none"
        previous = key
    return out


def labelled_rows(table: str, path: str | Path | None = None) -> dict[str, dict[str, dict[str, float]]] | None:
    """{row label: {set: {degradation: value}}} of `table`'s rows (not its Improvement lines), from `path` (a file in
    the layout of paper_results.yaml; default that file), or None when `path` does not exist."""
    if path is None:
        doc = published()
    elif Path(path).is_file():
        doc = yaml.safe_load(Path(path).read_text())
    else:
        return None
    return {row["label"]: row_values(row, doc["degradations"]) for row in doc["tables"][table]["rows"]
            if not row.get("improvement")}


def paper_setting(backbone: str) -> str:
    """The paper's training size for `backbone`, e.g. `16 residual blocks, 1.5M parameters; 500,000 iterations;
    DIV2K (800 images); batch 16 LR patches of 32x32`."""
    s = published()["setting"]
    arch = s.get(backbone, "")
    return "; ".join(x for x in (arch, f"{int(s['iterations']):,} iterations", s["data"], s["batch"]) if x)


def paper_gains(backbone: str, settings: list[tuple[str, float]], protocol: str, metric: str, pipeline: str) -> dict:
    """{(set, degradation): the paper's published Improvement} of the dropout setting among `settings`
    ((position, p) pairs, the baseline's included); {} where the paper has none, the protocol is not its, or the
    training is not its (`paper_rows`)."""
    for _, values, kind in paper_rows("table1", backbone, settings, protocol, metric, pipeline):
        if kind == "paper_delta":
            return {(s, d): v for s, degs in values.items() for d, v in degs.items()}
    return {}
