"""Interpretation tools of the paper's section 6 on trained checkpoints (the library is src/analysis/).

    python -m src.analyze <csm|ablation|ddr|all> ckpt=<path> [ckpts=[a,b] labels=[p0,p0.7]] out=<folder>
    python -m src.analyze all groups={p0:[runA,runB],p0.7:[runC,runD]} out=<folder>     # mean +- std per group
    python -m src.analyze released released.dir=<folder of the paper's released models> out=<folder>
    python -m src.analyze merge sources=[<groups analysis>,<another>] out=<folder>     # pool seeds analysed apart

Composes conf/analyze.yaml and calls `src.analysis.pipeline.run_config`; see that module for what lands in `out`.
"""
from __future__ import annotations

import sys

from src.analysis.pipeline import CLI_TOOLS, run_config

PATH_KEYS = ("ckpt", "ckpts", "sources", "image", "out", "data.root", "released.dir", "released.paper")


def _quote(value: str) -> str:
    if value[:1] in ("'", '"'):
        return value
    return f"'{value}'" if '"' in value else f'"{value}"'


def _preprocess_argv(argv: list[str]) -> list[str]:
    """Make the command line Hydra-parsable.

    `python -m src.analyze csm ...` becomes `... tool=csm ...` (Hydra only parses key=value overrides), and
    paths holding `=` (this suite's run folders are named by their overrides, e.g. `dropout.p=0.7`) are
    quoted, which Hydra's override grammar otherwise rejects.
    """
    args = list(argv[1:])
    if args and args[0] in CLI_TOOLS:
        args[0] = f"tool={args[0]}"
    for i, arg in enumerate(args):
        key, sep, value = arg.partition("=")
        if not sep or key not in PATH_KEYS or "=" not in value:
            continue
        if value.startswith("[") and value.endswith("]"):
            value = "[" + ",".join(_quote(v) if "=" in v else v for v in value[1:-1].split(",")) + "]"
        else:
            value = _quote(value)
        args[i] = f"{key}={value}"
    return [argv[0], *args]


def _hydra_main():
    import hydra

    from src.cli import one_line_errors, run

    @hydra.main(version_base="1.3", config_path="../conf", config_name="analyze")
    @one_line_errors("analyze")
    def main(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig

        # ${now:...} in `out` would resolve to a later second than the folder Hydra already created.
        run_config(cfg, HydraConfig.get().runtime.output_dir)

    run(main, "analyze")  # errors as one line naming the key (the traceback with HYDRA_FULL_ERROR=1)


if __name__ == "__main__":
    sys.argv = _preprocess_argv(sys.argv)
    _hydra_main()
