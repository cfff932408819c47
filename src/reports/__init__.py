"""Reports as a library: collect runs (collect), build the paper's tables (tables), render them (render), draw the
figures (figures), log them to W&B (wandb_report); `build_report` does all of it. `python -m src.report` is the CLI."""
from src.reports.build import build_report
from src.reports.collect import Run, load_runs

__all__ = ["Run", "build_report", "load_runs"]
