"""The key=value options of the small tools that are not Hydra apps (bench, gpucheck, data.download,
data.testsets): one spelling for every tool, parsed without importing any of the suite's heavy modules, so a data
module can use it without an import circle through the Hydra error handling of src.cli."""
from __future__ import annotations

from typing import Sequence


def list_value(text: str) -> list[str]:
    """`[a,b]` (Hydra's spelling) or `a,b` as a list of names."""
    return [v.strip() for v in text.strip().strip("[]").split(",") if v.strip()]


def key_values(argv: Sequence[str], options: dict[str, tuple[type, object, str]], tool: str
               ) -> tuple[list[str], dict[str, object]]:
    """A small tool's command line in the suite's one convention: positional names, then `key=value` settings
    (`options`: {key: (type, default, help)}; bool values are true/false, list values `[a,b]`). A `--key value`
    flag is refused with its new spelling, so a command copied from older notes says how to write it now."""
    values, names = {k: default for k, (_, default, _) in options.items()}, []
    for i, arg in enumerate(argv):
        key, eq, text = arg.partition("=")
        if arg.startswith("-"):
            flag = key.lstrip("-").replace("-", "_")
            following = argv[i + 1] if not eq and i + 1 < len(argv) else None
            value = text if eq else (following if following and "=" not in following
                                     and options.get(flag, (None,))[0] is not bool else "true")
            hint = f"write {flag}={value}" if flag in options else f"settings: {', '.join(options)}"
            raise SystemExit(f"error: {tool}: {arg!r}: settings are key=value, not --flags; {hint}")
        if not eq:
            names.append(arg)
            continue
        if key not in options:
            raise SystemExit(f"error: {tool}: {key!r} is not a setting; settings: {', '.join(options)}")
        kind = options[key][0]
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise SystemExit(f"error: {tool}: {key}={text!r}: allowed values are true and false")
            values[key] = text.lower() == "true"
        elif kind is list:
            values[key] = list_value(text)
        else:
            try:
                values[key] = kind(text)
            except ValueError:
                what = {int: "a whole number", float: "a number"}.get(kind, kind.__name__)
                raise SystemExit(f"error: {tool}: {key}={text!r}: must be {what}") from None
    return names, values


def no_names(names: Sequence[str], options: dict, tool: str) -> None:
    """Refuse positional words for a tool that takes only key=value settings."""
    if names:
        raise SystemExit(f"error: {tool}: {names[0]!r} is not a setting; settings are key=value: "
                         f"{', '.join(options)} (python -m {tool} --help)")
