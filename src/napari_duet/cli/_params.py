"""Command-line options generated from the engines' parameter declarations.

Each user-facing parameter of an engine's config (a field declared with ``help``, see
:func:`napari_duet.core.config.param`) becomes one option: its name (``--max-alternations``,
or the declared ``cli`` name), type, choices and help all come from the declaration.  The
options default to "not given", so ``--config PARAMS.json`` (a parameter file, as the widgets'
"Save parameters…" writes) supplies the values and the flags given override them.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from ..core.config import (
    EngineConfig,
    cli_help,
    load_params,
    option_dest,
    option_flag,
    param_info,
    param_type,
    user_params,
)

__all__ = ["HelpFormatter", "add_param_options", "config_from_args", "option_dest",
           "option_flag"]

def number_or_text(text: str) -> float | str:
    """The value of an option of mixed type ("auto" or seconds): a number when the text is
    one, else the text (the config's check says what is allowed)."""
    try:
        return float(text)
    except ValueError:
        return text


_TYPES = {int: int, float: float, str: str, object: number_or_text}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Option help wrapped without breaking an option name at its dashes
    (``--max-alternations`` stays one word, so it can be searched for)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def add_param_options(parser: argparse.ArgumentParser, cls: type[EngineConfig], *,
                      skip: tuple[str, ...] = (),
                      overrides: dict[str, dict[str, Any]] | None = None,
                      config_option: bool = True) -> None:
    """Add one option per user-facing parameter of ``cls`` (not those in ``skip``), and
    ``--config PARAMS.json`` (unless ``config_option`` is False: a command whose
    ``--config`` takes more than a parameter file adds its own).  ``overrides``: argparse
    keywords for one option (for example the device names this machine offers)."""
    overrides = overrides or {}
    for name in user_params(cls):
        if name in skip:
            continue
        info = param_info(cls, name)
        base, _optional = param_type(cls, name)
        kwargs: dict[str, Any] = {"dest": option_dest(cls, name), "default": None,
                                  "help": cli_help(cls, name)}
        if base is bool:  # a switch both ways: --tta / --no-tta (not given: None)
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _TYPES[base]
            if "choices" in info:
                kwargs["choices"] = tuple(info["choices"])
            else:
                kwargs["metavar"] = info.get("metavar", name.upper())
        kwargs.update(overrides.get(name, {}))
        if "choices" in kwargs and "metavar" not in overrides.get(name, {}):
            kwargs.pop("metavar", None)
        parser.add_argument(option_flag(cls, name), **kwargs)
    if not config_option:
        return
    parser.add_argument(
        "--config", metavar="PARAMS.json", default=None,
        help=f"{cls.LABEL} parameters from a JSON file (as the widget's \"Save parameters…\" "
             "writes); options given on the command line override its values; an unknown "
             "parameter in the file exits with code 2")


def config_from_args(cls: type[EngineConfig], args: argparse.Namespace, *,
                     skip: tuple[str, ...] = (), **extra: Any) -> EngineConfig:
    """The config of a command: the ``--config`` file's values, then the options given,
    then ``extra``; bad values and unknown keys raise
    :class:`~napari_duet.core.config.ConfigError` (exit code 2, one line)."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_params(args.config, cls))
    for name in user_params(cls):
        if name in skip:
            continue
        given = getattr(args, option_dest(cls, name), None)
        if given is not None:
            values[name] = given
    values.update(extra)
    return cls.from_dict(values)
