"""The paper's test protocol: benchmark sets x test degradations -> PSNR/SSIM (Y and RGB), as files.

Two protocols (src.data.testsets): `literature` (MATLAB bicubic LR, Y-PSNR headline, `results.json`) and
`official` (the paper's own script's LR, RGB-PSNR headline as its test configs, `results_official.json`). Every
entry records its protocol and the scores of each image (`per_image`, for paired statistics).

Each SR output is clamped and rounded to 8 bits before scoring, because that is what a saved result image would
score and what published tables measure. Metrics are averaged over images (not pixels), as the literature does.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from src.data.imageio import decode_image, to_rgb_uint8
from src.data.testsets import (ALL_TEST_DEGRADATIONS, GIVEN, PROTOCOLS, TEST_DEGRADATIONS, bicubic_upscale,
                               check_protocol, load_test_pairs, match_given_lr, read_given_pair,
                               read_test_hr)
from src.metrics import METRICS, Reference, protocol_metric, scores
from src.models.loading import pad_multiple
from src.runs import read_state, results_file
from src.tiling import upscale_image
from src.utils import atomic_write_text, json_lines

log = logging.getLogger(__name__)

SSIM_WINDOW = 11
CHUNK = 8  # images decoded at a time


def results_files(run_dir: str | os.PathLike, protocol: str = "literature") -> tuple[Path, Path]:
    """(json, csv) paths of a protocol's results in a run folder (names from src.runs)."""
    path = results_file(run_dir, check_protocol(protocol))
    return path, path.with_suffix(".csv")


def resolve_protocols(value) -> list[str]:
    """`literature`, `official` or `both` (also a list) -> the protocols to evaluate, in a fixed order."""
    names = list(PROTOCOLS) if value == "both" else ([value] if isinstance(value, str) else list(value or []))
    bad = [n for n in names if n not in PROTOCOLS]
    if bad or not names:
        raise ValueError(f"protocol={value!r}: allowed {', '.join(PROTOCOLS)} or both")
    return [n for n in PROTOCOLS if n in names]


def protocol_of(results: Mapping) -> str:
    """The protocol all entries of a results dict were made with (entries without one predate protocols:
    literature); a mix is a ValueError."""
    found = {e.get("protocol", "literature") for row in results.values() for e in row.values()
             if isinstance(e, Mapping)}
    if len(found) > 1:
        raise ValueError(f"results mix protocols {sorted(found)}; keep each protocol in its own file")
    return found.pop() if found else "literature"


def check_image(img: np.ndarray, scale: int, path: str | os.PathLike = "<array>") -> None:
    """Raise a ValueError naming `path` if the image cannot be evaluated at this scale."""
    h, w = img.shape[:2]
    if h < scale or w < scale:
        raise ValueError(f"{path}: image is {w}x{h} px, smaller than the scale x{scale}; no LR image can be "
                         f"made from it")
    hc, wc = h - h % scale - 2 * scale, w - w % scale - 2 * scale
    if min(hc, wc) < SSIM_WINDOW:
        raise ValueError(f"{path}: image is {w}x{h} px; cropped to a multiple of {scale} and by {scale} border px "
                         f"it is {max(wc, 0)}x{max(hc, 0)}, smaller than SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window")


def usable_paths(paths: Sequence[os.PathLike], scale: int) -> tuple[list[Path], list[str], set[Path]]:
    """(paths that decode and are large enough, one message per rejected file naming its path, the usable paths
    whose file is single-channel 8-bit gray)."""
    good, rejected, gray = [], [], set()
    for p in map(Path, paths):
        try:
            raw = decode_image(p)
            check_image(to_rgb_uint8(raw, str(p)), scale, p)
        except ValueError as e:  # ImageReadError is a ValueError
            rejected.append(str(e))
            continue
        good.append(p)
        if raw.dtype == np.uint8 and (raw.ndim == 2 or raw.shape[2] == 1):
            gray.add(p)
    return good, rejected, gray


class BicubicUpsampler(nn.Module):
    """The reference "model" of SR tables: the protocol's own bicubic enlargement of the 8-bit LR image
    (MATLAB imresize for `literature`, PIL's BICUBIC for `official`). Input and output are [0, 1] tensors."""

    def __init__(self, scale: int = 4, protocol: str = "literature"):
        super().__init__()
        self.scale, self.protocol = int(scale), check_protocol(protocol)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lr = x.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        up = np.stack([bicubic_upscale(np.ascontiguousarray(a), self.scale, self.protocol) for a in lr])
        return torch.from_numpy(up).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255.0


def super_resolve(model: nn.Module, lr: np.ndarray, scale: int, device="cpu", tile: int | None = None,
                  overlap: int = 16) -> np.ndarray:
    """uint8 (h, w, 3) LR -> uint8 (h*scale, w*scale, 3) SR, clamped and rounded as an 8-bit image file."""
    return upscale_image(model, np.ascontiguousarray(lr), scale, tile, overlap, pad_multiple(model), device)


def score_image(sr: np.ndarray, hr: np.ndarray, scale: int, round_y: bool = False,
                gray: bool = False) -> dict[str, float]:
    """PSNR/SSIM on Y and on RGB of one uint8 SR image against its HR, `scale` border pixels cropped.

    `round_y` rounds Y to integers (MATLAB's rgb2ycbcr on uint8); `gray` scores the Y columns on grey levels
    (src.metrics), for an HR image that is a gray file.
    """
    return scores(sr, hr, scale, round_y, gray)


def _reusable(entry, scale: int, seed: int, n_paths: int, protocol: str, round_y: bool) -> bool:
    # Entries written before protocols existed are literature ones; without per-image scores they are
    # recomputed, so that every reused entry can enter paired statistics.
    return (isinstance(entry, Mapping) and entry.get("scale") == scale and entry.get("seed") == seed
            and entry.get("protocol", "literature") == protocol and entry.get("round_y", False) == round_y
            and entry.get("n_images", -1) + entry.get("skipped", 0) == n_paths and all(m in entry for m in METRICS)
            and isinstance(entry.get("per_image"), Mapping) and len(entry["per_image"]) == entry["n_images"])


def usable_cache_dir(cache_dir: str | os.PathLike | None) -> Path | None:
    """`cache_dir` if LR images can be written there, else None after one warning naming the folder."""
    if cache_dir is None:
        return None
    folder = Path(cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        log.warning("test-set cache %s is not writable (%s); evaluating without a cache (LR images are "
                    "recomputed each time; set cache_dir=... to a writable folder)", folder, e.strerror or e)
        return None
    return folder


def _image_keys(paths: Sequence[Path]) -> list[str]:
    """Per-image result keys: the file stem, or the file name where two files share a stem."""
    stems = [p.stem for p in paths]
    return [p.stem if stems.count(p.stem) == 1 else p.name for p in paths]


def results_entry(per_image: Mapping[str, Mapping[str, float]], skipped: int, scale: int, seed: int, protocol: str,
                  round_y: bool) -> dict:
    """One set x degradation of a results dict: the mean of each metric over the images, what it was made with,
    and the per-image scores."""
    entry = {m: (float(np.mean([v[m] for v in per_image.values()])) if per_image else math.nan) for m in METRICS}
    entry.update(n_images=len(per_image), skipped=skipped, scale=scale, seed=seed, protocol=protocol,
                 round_y=round_y, per_image=dict(per_image))
    return entry


@torch.no_grad()
def evaluate(model: nn.Module, sets: Mapping[str, Sequence[os.PathLike]],
             degradations: Sequence[str] = TEST_DEGRADATIONS, scale: int = 4, seed: int = 0, device="cpu",
             tile: int | None = None, cache_dir: str | os.PathLike | None = None, overlap: int = 16,
             done: Mapping | None = None, protocol: str = "literature", round_y: bool = True,
             given_lr: Mapping[str, str | os.PathLike] | None = None) -> dict:
    """`{set: {degradation: {psnr, ssim, psnr_rgb, ssim_rgb, n_images, skipped, scale, seed, protocol, round_y,
    per_image: {<image file stem>: {psnr, ssim, psnr_rgb, ssim_rgb}}}}}`.

    PSNR/SSIM "psnr"/"ssim" are on the Y channel, "*_rgb" on RGB, all with `scale` border pixels cropped from
    HR images cropped to a multiple of `scale`; the set's figures are means over its images. Under
    `literature`, Y is rounded to integers as MATLAB's rgb2ycbcr does (`round_y=False` keeps it in float) and a
    gray file is scored on its grey levels, as the MATLAB scripts behind published tables do; under `official`,
    Y is BasicSR's (float, every image as RGB) and RGB PSNR is the headline. The degradation `given` scores a
    set's own LR images, from the folder `given_lr[set]` (files matched to the HR files by name). Unreadable and
    too-small images are logged by path and counted in "skipped". Entries of `done` (an earlier results dict of
    the same protocol) made with the same scale, seed and image count, with per-image scores, are reused instead
    of recomputed. An unwritable `cache_dir` is left out with one warning.
    """
    check_protocol(protocol)
    round_y = bool(round_y) and protocol == "literature"
    unknown = [d for d in degradations if d not in ALL_TEST_DEGRADATIONS + (GIVEN,)]
    if unknown:
        raise ValueError(f"degradations {unknown} unknown; allowed: {', '.join(ALL_TEST_DEGRADATIONS + (GIVEN,))}")
    given_lr = dict(given_lr or {})
    if GIVEN in degradations:
        lacking = [s for s in sets if s not in given_lr]
        if lacking:
            raise ValueError(f"degradation {GIVEN!r} needs a folder of LR images for every set; none for "
                             f"{', '.join(lacking)}")
    cache_dir = usable_cache_dir(cache_dir)
    was_training = model.training
    model.eval().to(device)
    done = done or {}
    results: dict = {}
    try:
        for set_name, paths in sets.items():
            paths = list(paths)
            results[set_name] = {}
            todo = [d for d in degradations
                    if not _reusable(done.get(set_name, {}).get(d), scale, seed, len(paths), protocol, round_y)]
            for d in degradations:
                if d not in todo:
                    results[set_name][d] = dict(done[set_name][d])
            if not todo:
                log.info("%s: all %d degradations already evaluated", set_name, len(degradations))
                continue
            good, rejected, gray = usable_paths(paths, scale)
            gray = gray if protocol == "literature" else set()
            for msg in rejected:
                log.warning("skipping %s", msg)
            keys = dict(zip(good, _image_keys(good)))
            # matched against every HR file, so that a missing or extra LR file is named even when its HR is bad
            lr_of = dict(match_given_lr(paths, given_lr[set_name], scale)) if GIVEN in todo else {}

            def pairs_of(chunk: list[Path], d: str, hrs: Mapping) -> list[tuple[Path, np.ndarray, np.ndarray]]:
                if d == GIVEN:
                    return [(p, *read_given_pair(p, lr_of[p], scale)) for p in chunk]
                return load_test_pairs(chunk, d, scale, seed, cache_dir, protocol, hrs)

            per_image: dict[str, dict] = {d: {} for d in todo}
            seconds = dict.fromkeys(todo, 0.0)
            # In chunks: a whole Urban100 of decoded HR images would hold ~300 MB. Each chunk's HR images are
            # decoded once for all degradations (PNG decoding costs as much as scoring), and each HR image is
            # prepared for scoring once (Reference: its crop, Y and SSIM means) for the outputs of all of them, so
            # the loop runs over images, then degradations. The noise is seeded by image content, so chunking
            # does not change any LR image.
            for chunk in (good[i:i + CHUNK] for i in range(0, len(good), CHUNK)):
                hrs = {p: read_test_hr(p, protocol) for p in chunk} if set(todo) - {GIVEN} else {}
                pairs = {}
                for d in todo:
                    start = time.perf_counter()
                    pairs[d] = pairs_of(chunk, d, hrs)
                    seconds[d] += time.perf_counter() - start
                for i in range(len(chunk)):
                    ref_hr, ref = None, None
                    for d in todo:
                        start = time.perf_counter()
                        path, hr, lr = pairs[d][i]
                        sr = super_resolve(model, lr, scale, device, tile, overlap)
                        if sr.shape != hr.shape:
                            raise ValueError(f"{path}: SR output is {sr.shape}, HR is {hr.shape}; is the model "
                                             f"x{scale}?")
                        # a given LR folder's pairs crop their HR image their own way: compared, not assumed
                        if ref is None or hr.shape != ref_hr.shape or not np.array_equal(hr, ref_hr):
                            ref_hr, ref = hr, Reference(hr, scale, round_y, path in gray)
                        per_image[d][keys[path]] = ref.scores(sr)
                        seconds[d] += time.perf_counter() - start
            for d in todo:
                entry = results_entry(per_image[d], len(rejected), scale, seed, protocol, round_y)
                results[set_name][d] = entry
                log.info("%s/%s (%s): PSNR-Y %.2f dB, PSNR-RGB %.2f dB, SSIM-Y %.4f over %d images (%d skipped) "
                         "in %.1f s", set_name, d, protocol, entry["psnr"], entry["psnr_rgb"], entry["ssim"],
                         entry["n_images"], len(rejected), seconds[d])
    finally:
        model.train(was_training)
    return results


def format_table(results: Mapping, metric: str | None = None, reference: Mapping | None = None) -> str:
    """Text table: rows = sets, columns = degradations, cells = `metric`; by default the protocol's headline
    (PSNR-Y for `literature`, RGB PSNR for `official`). The title names the protocol. `reference` (results of
    the bicubic reference, same shape) adds a `<set> bicubic` row under each set and a line on how to read them."""
    protocol = protocol_of(results)
    metric = metric or protocol_metric(protocol)
    degs = [d for d in TEST_DEGRADATIONS if any(d in r for r in results.values())]
    degs += [d for r in results.values() for d in r if d not in degs]
    digits = 4 if metric.startswith("ssim") else 2
    width = max([len(s) + (len(" bicubic") if reference else 0) for s in results] + [len("set")])
    title = {"psnr": "PSNR (dB, Y channel)", "ssim": "SSIM (Y channel)", "psnr_rgb": "PSNR (dB, RGB)",
             "ssim_rgb": "SSIM (RGB)"}.get(metric, metric)
    header = f"{'set':<{width}} " + " ".join(f"{d:>7}" for d in degs) + f" {'images':>7}"
    lines = [f"{title}, {protocol} protocol", header]
    notes = []
    for s, row in results.items():
        cells = []
        for d in degs:
            v = row.get(d, {}).get(metric)
            cells.append(f"{v:7.{digits}f}" if isinstance(v, (int, float)) and math.isfinite(v) else f"{'-':>7}")
        n = max((e.get("n_images", 0) for e in row.values()), default=0)
        skipped = max((e.get("skipped", 0) for e in row.values()), default=0)
        if skipped:
            notes.append(f"{s}: {skipped} image(s) skipped (unreadable or too small; see the log)")
        lines.append(f"{s:<{width}} " + " ".join(cells) + f" {n:>7}")
    if reference:
        for s in results:
            ref = reference.get(s, {})
            cells = [f"{v:7.{digits}f}" if isinstance(v := ref.get(d, {}).get(metric), (int, float))
                     and math.isfinite(v) else f"{'-':>7}" for d in degs]
            lines.append(f"{s + ' bicubic':<{width}} " + " ".join(cells)
                         + f" {max((e.get('n_images', 0) for e in ref.values()), default=0):>7}")
        notes.append("Reading: the bicubic rows enlarge the same test LR with the protocol's own bicubic. A model "
                     "trained on Real-ESRGAN degradations smooths detail it takes for noise, so it can sit below "
                     "bicubic on clean input and still be ahead of it on the noisy columns.")
    return "\n".join(lines + notes)


def bicubic_reference(sets: Mapping[str, Sequence[os.PathLike]], degradations: Sequence[str], scale: int, seed: int,
                      protocol: str, round_y: bool, cache_dir: str | os.PathLike | None) -> dict:
    """Results of the bicubic reference on `sets`, kept in `cache_dir` (one file per protocol and scale) so that
    each set is scored once per machine, not after every training run."""
    path = Path(cache_dir) / f"bicubic_{protocol}_x{scale}.json" if cache_dir is not None else None
    try:  # a corrupt cache file is moved aside by read_state; an unreadable one only costs a recomputation
        done = read_state(path) if path is not None else None
    except OSError:
        done = None
    done = done if isinstance(done, Mapping) else {}
    # A cached set is reused only when it scored exactly these images (same count is checked by evaluate).
    done = {s: r for s, r in done.items() if s in sets and isinstance(r, Mapping)
            and sorted(r.get("_images", [])) == sorted(Path(p).name for p in sets[s])}
    results = evaluate(BicubicUpsampler(scale, protocol), sets, degradations=degradations, scale=scale, seed=seed,
                       cache_dir=cache_dir, done=done, protocol=protocol, round_y=round_y)
    if path is not None:
        store = {s: {**r, "_images": sorted(Path(p).name for p in sets[s])} for s, r in results.items()}
        try:
            atomic_write_text(path, json.dumps(_finite(store), indent=1, sort_keys=True))
        except OSError as e:  # a read-only cache only costs a recomputation next time
            log.warning("could not cache the bicubic reference in %s: %s", path, e)
    return results


def _finite(v):
    if isinstance(v, Mapping):
        return {k: _finite(x) for k, x in v.items()}
    return v if not isinstance(v, float) or math.isfinite(v) else None


def results_csv(results: Mapping) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["set", "degradation", "metric", "value", "n_images", "skipped"])
    for s, row in results.items():
        for d, e in row.items():
            for m in METRICS:
                if m in e:
                    v = _finite(e[m])
                    w.writerow([s, d, m, "" if v is None else f"{v:.6f}", e.get("n_images", ""), e.get("skipped", "")])
    return buf.getvalue()


def write_results(run_dir: str | os.PathLike, results: Mapping, protocol: str | None = None) -> tuple[Path, Path]:
    """Write the protocol's json (the results dict; NaN/inf as null) and csv (long format, set means) atomically:
    `results.json`/`.csv` for `literature`, `results_official.json`/`.csv` for `official`. The protocol is
    the one recorded in the entries unless given."""
    protocol = protocol or protocol_of(results)
    json_path, csv_path = results_files(run_dir, protocol)
    clean = {s: {d: _finite(e) for d, e in row.items()} for s, row in results.items()}
    j = atomic_write_text(json_path, json_lines(clean))
    c = atomic_write_text(csv_path, results_csv(results))
    return j, c


def load_results(run_dir: str | os.PathLike, protocol: str = "literature") -> dict:
    """The protocol's results dict of a run folder, {} if it has none; a corrupt file is treated as absent as
    every state file is (src.runs.read_state: moved aside with a warning). Files written before protocols and
    per-image scores existed read as they are (literature)."""
    data = read_state(results_files(run_dir, protocol)[0])
    return data if isinstance(data, dict) else {}


def merge_results(old: Mapping, new: Mapping) -> dict:
    """`old` updated with `new`, per (set, degradation)."""
    out = {s: dict(row) for s, row in old.items()}
    for s, row in new.items():
        out.setdefault(s, {}).update(row)
    return out
