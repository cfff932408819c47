"""`--help` of every tool: a description, the tool's own keys (each one a real key of its config), examples."""
import os
import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import CONF, REPO

TOOLS = ["train", "eval", "infer", "export", "analyze"]
TRAIN_GROUPS = ["backbone", "data", "degradation", "trainer", "logger", "callbacks", "size", "experiment", "debug",
                "scheduler"]


@pytest.fixture(scope="module")
def helps():
    # All tools at once: each start imports torch, which is most of the time taken.
    env = {**os.environ, "WANDB_MODE": "disabled"}
    procs = {t: subprocess.Popen([sys.executable, "-m", f"src.{t}", "--help"], cwd=REPO, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for t in TOOLS}
    out = {}
    for tool, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
        out[tool] = stdout
    return out


def _config(tool):
    from hydra import compose, initialize_config_dir

    from src.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose(tool), resolve=False)


def _documented(text):
    """`key=value` words that start a line of the help (the documented keys and groups)."""
    return re.findall(r"^ {2,}([a-z_][\w.]*)=", text, flags=re.M)


def _has_key(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("tool", TOOLS)
def test_help_describes_the_tool_with_examples(helps, tool):
    text = helps[tool]
    lines = text.strip().splitlines()
    assert lines[0].startswith(f"python -m src.{tool}")  # the usage line
    assert "Examples:" in text
    examples = text.split("Examples:")[1]
    assert len(re.findall(rf"^\s+python -m src\.{tool}\b", examples, flags=re.M)) >= 2
    assert len(lines) < 70, "a help page, not a config dump"
    assert "_target_" not in text and "== Config ==" not in text  # not Hydra's default dump
    # one style across tools: key=value words, no --flags besides Hydra's own
    assert set(re.findall(r"(?<![\w-])--[a-z][\w-]*", text)) <= {"--help", "--cfg", "--hydra-help", "--config-dir",
                                                                 "--config-name"}


@pytest.mark.parametrize("tool", TOOLS)
def test_every_documented_key_exists_in_the_tools_config(helps, tool):
    cfg = _config(tool)
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    documented = _documented(helps[tool])
    assert len(documented) >= 5
    missing = [k for k in documented if k not in groups and not _has_key(cfg, k)]
    assert not missing, f"src.{tool} --help documents keys its config does not have: {missing}"


@pytest.mark.parametrize("tool", TOOLS[1:])
def test_other_tools_list_no_training_groups(helps, tool):
    cfg = _config(tool)
    # a training group named in another tool's help is only fine where that tool has a key of the same name
    groups = {k for k in _documented(helps[tool]) if not _has_key(cfg, k)}
    assert not groups & {"trainer", "logger", "callbacks", "data", "degradation", "size", "experiment", "debug"}


def test_train_help_lists_every_option_of_every_group(helps):
    text = helps["train"]
    for group in TRAIN_GROUPS:
        assert re.search(rf"^ {{2,}}{group}=", text, flags=re.M), f"group {group} is not in src.train --help"
        for option in sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_")):
            assert re.search(rf"\b{option}\b", text), f"{group}={option} is not in src.train --help"
    for variable in ("SR_DATA_ROOT", "SR_RUNS_DIR", "SR_CACHE_DIR"):
        assert variable in text
