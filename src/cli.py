"""The command line around Hydra's entry points: errors as one line, with the fix where one can be guessed.

Hydra prints a shortened traceback for any error, and for a mistyped key (`dropout.pos=b4`) it suggests adding the
key with `+`, which would train with the default value. `run(main)` runs a `@hydra.main` function (whose task is
decorated with `one_line_errors`, or catches its errors itself as src.train does) so that:

- an error is one `error: ...` line on stderr, exit code 1 (the traceback only with HYDRA_FULL_ERROR=1);
- a key that does not exist gets the nearest known key (`dropout.pos=b4` -> dropout.position=b4);
- a `--flag value` that is not one of Hydra's flags gets the key it most likely means (`--steps 3` ->
  trainer.max_steps=3), since every setting here is `key=value`.
"""
from __future__ import annotations

import functools
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Set by the first process from the user's HYDRA_FULL_ERROR and inherited by the processes it starts (DDP ranks):
# every process of one command shows tracebacks or none.
_FULL_ERROR = "_SR_FULL_ERROR"


def full_error() -> bool:
    return os.environ.setdefault(_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "0")) == "1"


def _hydra_flags() -> set[str]:
    from hydra._internal.utils import get_args_parser

    return set(get_args_parser()._option_string_actions)


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """The key=value overrides of a command line, and the config name it composes (--config-name/-cn)."""
    overrides, name = [], None
    for i, arg in enumerate(argv):
        if arg in ("--config-name", "-cn") and i + 1 < len(argv):
            name = argv[i + 1]
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
    return overrides, name


def known_keys(config_name: str, argv: Sequence[str], leave_out: str | None = None) -> list[str]:
    """Every key of the config this command composes (its group choices applied where they compose)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from src.preflight import config_keys
    from src.resolvers import register_resolvers

    register_resolvers()
    overrides, name = _split_overrides(argv)
    overrides = [o for o in overrides if o.lstrip("+~").partition("=")[0] != leave_out]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            # A sweep file (--config-dir sweeps) is not in conf/: its keys are those of the tool's own config.
            for config, attempt in ((name or config_name, overrides), (config_name, overrides), (config_name, [])):
                try:
                    return config_keys(compose(config, overrides=list(attempt)))
                except Exception:  # noqa: BLE001 - an override or a config that fails: try the plainer one
                    continue
    finally:
        GlobalHydra.instance().clear()
    return []


def flag_error(argv: Sequence[str], config_name: str) -> str | None:
    """A message for a `--flag` that is none of Hydra's (`--steps 3`), naming the key=value it most likely means."""
    from src.preflight import suggest_key

    flags = _hydra_flags()
    for i, arg in enumerate(argv):
        if not arg.startswith("-") or arg.partition("=")[0] in flags or re.fullmatch(r"-\d.*", arg):
            continue
        word, eq, value = arg.lstrip("-").partition("=")
        if not eq:
            following = argv[i + 1] if i + 1 < len(argv) else ""
            value = following if following and not following.startswith("-") and "=" not in following else "..."
        name, keys = word.replace("-", "_"), known_keys(config_name, argv)
        close = name if name in keys else suggest_key(name, keys, same_parent=False)  # `--ckpt x` -> ckpt=x
        hint = f"did you mean {close}={value}? " if close else ""
        return (f"{arg}: settings are key=value here, not --flags; {hint}(python -m src.{config_name} --help lists "
                f"them; --cfg job prints every key)")
    return None


def explain(error: BaseException, argv: Sequence[str], config_name: str) -> str:
    """One line for an error, with the key a mistyped override most likely meant."""
    from src.preflight import suggest_key

    text = str(error)
    missing = re.search(r"Could not override '([^']+)'", text)
    if missing:
        key = missing.group(1)
        value = next((o.partition("=")[2] for o in argv if o.partition("=")[0] == key), "...")
        close = suggest_key(key, known_keys(config_name, argv, leave_out=key))
        hint = f"did you mean {close}={value}?" if close else "python -m src." + config_name + " --cfg job lists every key"
        return f"{key}={value}: there is no key {key}; {hint} (a new key is added with +{key}=..., but nothing reads it)"
    if type(error).__module__.startswith(("hydra", "omegaconf")):
        # Hydra's composition errors are written for reading: keep them, on as few lines as they allow.
        text = text.partition("Config search path")[0].strip()
        return text.replace(":\n\t", ": ").replace("\n\t", ", ").replace("\n\n", "; ").replace("\n", " ")
    return f"{type(error).__name__}: {text}" if not isinstance(error, (ValueError, FileNotFoundError, RuntimeError)) \
        else text


def exit_with(error: BaseException, argv: Sequence[str] = (), config_name: str = "train") -> None:
    """End the command on `error`: its one-line message (the traceback with HYDRA_FULL_ERROR=1), exit code 1.

    For errors Hydra would otherwise swallow (a callback's become warnings) or decorate ("Error executing job
    with overrides ...")."""
    if full_error():
        traceback.print_exception(error)
    else:
        print(f"error: {explain(error, argv, config_name)}", file=sys.stderr)
    sys.exit(1)


def one_line_errors(config_name: str) -> Callable:
    """Decorate a tool's task function (under `@hydra.main`) so that an error inside it ends the command as its one
    line, exit code 1, before Hydra logs its "Error executing job" line (the traceback with HYDRA_FULL_ERROR=1)."""
    def wrap(task: Callable) -> Callable:
        @functools.wraps(task)
        def inner(cfg):
            try:
                return task(cfg)
            except Exception as error:  # noqa: BLE001 - every error of a command becomes its one-line message
                exit_with(error, sys.argv[1:], config_name)
        return inner
    return wrap


def run(main: Callable[[], object], config_name: str) -> None:
    """Call a `@hydra.main` function with the errors above turned into one line each."""
    argv = sys.argv[1:]
    user_full = full_error()
    if not user_full:
        message = flag_error(argv, config_name)
        if message:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own traceback; printed below
    try:
        main()
    except Exception as error:  # noqa: BLE001 - every error of a command becomes its one-line message
        if user_full:
            raise
        exit_with(error, argv, config_name)
