"""The OmegaConf resolvers the configs use (`${run_id:...}` for run-folder names, `${sets_present:...}` for test sets
that are scored where present), registered once per process by every entry point."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from src import runs


def register_resolvers() -> None:
    # A run without overrides still needs a stable folder name so that rerunning it resumes.
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", runs.run_id)
    if not OmegaConf.has_resolver("sets_present"):
        OmegaConf.register_new_resolver("sets_present", sets_present)


_NOTED: set[str] = set()


def sets_present(sets: Sequence[str], optional: Sequence[str], root: str | None) -> list[str]:
    """`sets` plus each of `optional` whose `<root>/<set>/HR` exists (`${sets_present:[...],[Manga109],${data.root}}`
    in a data option): the paper's presets score Manga109 where it can be had (it is not freely downloadable) and
    say once, in one line, when it is left out."""
    from src.data.datasets import default_data_root

    folder = Path(root) if root else default_data_root()
    kept = list(sets)
    for name in optional:
        if (folder / name / "HR").is_dir():
            kept.append(name)
        elif name not in _NOTED:
            _NOTED.add(name)
            print(f"[data] note: {name} is not scored ({folder / name / 'HR'} does not exist); put its HR images "
                  f"there to add it to data.test_sets", file=sys.stderr)
    return kept
