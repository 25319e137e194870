"""One base for the engines' configurations: validation, dict round trips, copies.

Every engine's configuration is a frozen dataclass extending :class:`EngineConfig`:

- values are checked once, when the object is built (``validate``), and a bad
  value raises :class:`ConfigError` (a :class:`~napari_duet.DuetInputError`)
  with a one-line message of one style: ``"<name> must be <rule>, got <value>"``;
- :meth:`~EngineConfig.to_dict`, :meth:`~EngineConfig.from_dict` and
  :meth:`~EngineConfig.replace` reject unknown keys, naming the key, the
  closest valid one and all valid ones (a misspelt key is never dropped);
- run-time options (device, previews, tiles, test-time augmentation, threads)
  are named in ``RUNTIME``: :meth:`~EngineConfig.model_dict` leaves them out
  of what a model file saves, and :meth:`~EngineConfig.from_model_dict` drops
  them from older files that saved them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import DuetInputError

__all__ = ["ConfigError", "EngineConfig", "check_choice", "check_declared", "check_int",
           "check_number", "cli_help", "device_param", "load_params", "need", "option_args",
           "option_dest", "option_flag", "param", "param_help", "param_info", "param_label",
           "param_type", "read_params", "save_params", "seed_param", "threads_param",
           "user_params"]

C = TypeVar("C", bound="EngineConfig")


class ConfigError(DuetInputError):
    """A configuration key or value is wrong (one line, says what is allowed)."""


def need(cond: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``cond``."""
    if not cond:
        raise ConfigError(message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None, *,
              optional: bool = False) -> None:
    """``value`` is an integer in ``[lo, hi]`` (or None when ``optional``)."""
    if optional and value is None:
        return
    ok = _is_int(value) and (lo is None or value >= lo) and (hi is None or value <= hi)
    if ok:
        return
    if lo is not None and hi is not None:
        rule = f"an integer in {lo}..{hi}"
    elif lo is not None:
        rule = "a positive integer" if lo == 1 else f"an integer >= {lo}"
    else:
        rule = "an integer" if hi is None else f"an integer <= {hi}"
    raise ConfigError(f"{name} must be {rule}{' or None' if optional else ''}, got {value!r}")


def check_number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False, optional: bool = False) -> None:
    """``value`` is a finite number within the bounds (open bounds excluded)."""
    if optional and value is None:
        return
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(float(value)))
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if ok:
        return
    if lo is not None and hi is not None:
        rule = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        rule = ("> " if lo_open else ">= ") + f"{lo}"
        rule = "positive" if (lo == 0 and lo_open) else rule
    elif hi is not None:
        rule = ("< " if hi_open else "<= ") + f"{hi}"
    else:
        rule = "a finite number"
    raise ConfigError(f"{name} must be {rule}{' or None' if optional else ''}, got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


# ---------------------------------------------------------------------------- declarations
def param(default: Any = dataclasses.MISSING, *, label: str | None = None,
          help: str | None = None, auto: str | None = None, choices: tuple | None = None,
          lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          hi_open: bool = False, odd: bool = False, example: str | None = None,
          none: str | None = None, cli: str | None = None, metavar: str | None = None) -> Any:
    """A configuration field with its one declaration in ``metadata``.

    The declaration is all that is written about a parameter: :meth:`EngineConfig.validate`
    checks the value from it (type from the annotation, ``choices``, bounds, ``odd``), the
    CLI package builds the argparse option from it and the napari plugin the control, so
    the three cannot drift apart.

    ``label``: a few plain words (widget label); ``help``: one or two sentences for a
    biologist, without jargon first; a field with ``help`` is user-facing (it gets a
    command-line option and may get a control), one without is an expert setting that is
    still validated.  ``auto``: what the automatic value (None / "auto") does; ``none``: what
    None means when it is not "automatic" (e.g. "no limit").  ``choices``: the allowed
    values; ``lo``/``hi``: bounds (``lo_open``/``hi_open`` exclude them); ``odd``: an odd
    integer.  ``example``: a typical command-line value.  ``cli``: the option's name when it
    is not the field's (``--classes`` for ``n_classes``); ``metavar``: its placeholder.
    """
    meta: dict[str, Any] = {}
    for key, value in (("label", label), ("help", help), ("auto", auto), ("choices", choices),
                       ("lo", lo), ("hi", hi), ("example", example), ("none", none),
                       ("cli", cli), ("metavar", metavar)):
        if value is not None:
            meta[key] = value
    for key, flag in (("lo_open", lo_open), ("hi_open", hi_open), ("odd", odd)):
        if flag:
            meta[key] = True
    return dataclasses.field(default=default, metadata=meta)


# The fields every engine has (device, threads, seed), declared once; an engine names
# what runs where and what the seed drives.
_THREADS_KEPT = "torch's setting as it is (the command's --threads, the widget's setting)"


def device_param(where: str = "Where to compute") -> Any:
    """The ``device`` field: "auto" (a GPU, CUDA or Apple MPS, when there is one), "cpu", ...

    ``where`` starts the help (``"Where to train"``)."""
    return param("auto", label="device",
                 help=f"{where}: auto uses a GPU (CUDA or Apple MPS) when there is one, else "
                      "the CPU.")


def threads_param(help: str = "torch CPU threads during the run (restored after).", *,
                  auto: str | None = None) -> Any:
    """The ``threads`` field (torch CPU threads, at least 1); None keeps torch's setting, or,
    with ``auto``, is the engine's own choice that ``auto`` describes."""
    return param(None, label="CPU threads", help=help, auto=auto,
                 none=None if auto else _THREADS_KEPT, lo=1)


def seed_param(help: str, metavar: str | None = "S") -> Any:
    """The ``seed`` field (default 0); ``help`` says what it drives."""
    return param(0, label="random seed", help=help, metavar=metavar)


def param_type(cls: type, name: str) -> tuple[type, bool]:
    """``(base type, None allowed)`` of field ``name``, from its annotation
    (``int``, ``float``, ``str`` or ``bool``; ``float | None`` gives ``(float, True)``; a
    mixed type such as ``float | str`` gives ``object``: checked by the config's ``check``)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            parts = [p.strip() for p in str(ann).split("|")]
            bases = [b for b in (bool, int, float, str) if b.__name__ in parts]
            # One type, or a mixed one ("float | str": seconds or "auto"), which the
            # config's own check() handles.
            return (bases[0] if len(bases) == 1 else object), "None" in parts
    raise KeyError(f"{cls.__name__} has no parameter {name!r}")


def user_params(cls: type) -> tuple[str, ...]:
    """The user-facing parameters of config class ``cls`` (declared with ``help``)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("help"))


def check_declared(cls: type, name: str, value: Any) -> None:
    """Check ``value`` against field ``name``'s declaration; raise :class:`ConfigError`
    ("<name> must be <rule>, got <value>")."""
    info = param_info(cls, name)
    base, optional = param_type(cls, name)
    if optional and value is None:
        return
    if "choices" in info:
        check_choice(name, value, info["choices"])
        return
    lo, hi = info.get("lo"), info.get("hi")
    if base is bool:
        need(isinstance(value, bool), f"{name} must be true or false, got {value!r}")
    elif base is int:
        check_int(name, value, None if lo is None else int(lo), None if hi is None else int(hi),
                  optional=optional)
        need(not info.get("odd") or value % 2 == 1, f"{name} must be odd, got {value!r}")
    elif base is float:
        check_number(name, value, lo, hi, lo_open=bool(info.get("lo_open")),
                     hi_open=bool(info.get("hi_open")), optional=optional)
    elif base is str:
        need(isinstance(value, str) and value != "",
             f"{name} must be a non-empty text, got {value!r}")


def param_info(cls: type, name: str) -> dict[str, Any]:
    """The declaration (metadata) of field ``name`` of config class ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return dict(f.metadata)
    raise KeyError(f"{cls.__name__} has no parameter {name!r}")


def param_label(cls: type, name: str) -> str:
    """The field's short label (its name with spaces when it declares none)."""
    return param_info(cls, name).get("label") or name.replace("_", " ")


def _default_of(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.default
    return dataclasses.MISSING


def param_help(cls: type, name: str, *, default: bool = True, extra: str = "") -> str:
    """The field's help text with its automatic behaviour and default, for
    ``argparse`` help and widget tooltips alike ("… (default: auto: …)")."""
    info = param_info(cls, name)
    text = info.get("help", "")
    if extra:
        text = f"{text} {extra}".strip()
    if "choices" in info:
        text += " Choices: " + ", ".join(map(str, info["choices"])) + "."
    elif "lo" in info or "hi" in info:
        lo, hi = info.get("lo"), info.get("hi")
        text += (f" From {lo:g} to {hi:g}." if lo is not None and hi is not None
                 else f" At least {lo:g}." if lo is not None and not info.get("lo_open")
                 else f" Above {lo:g}." if lo is not None else f" At most {hi:g}.")
    if default:
        value = _default_of(cls, name)
        if value is None and info.get("none"):
            shown = info["none"]
        elif value is None or value == "auto":
            shown = "auto" + (f" ({info['auto']})" if info.get("auto") else "")
        elif value is dataclasses.MISSING:
            shown = ""
        else:
            shown = str(value)
        if shown:
            text += f" Default: {shown}."
    if info.get("example"):
        text += f" Example: {info['example']}."
    return text


def cli_help(cls: type, name: str, **kwargs: Any) -> str:
    """:func:`param_help` for ``argparse`` (a literal ``%`` escaped)."""
    return param_help(cls, name, **kwargs).replace("%", "%%")


def option_dest(cls: type, name: str) -> str:
    """The command-line name of parameter ``name`` (its declared ``cli`` name, or itself):
    the ``args`` attribute of its generated option."""
    return param_info(cls, name).get("cli", name)


def option_flag(cls: type, name: str) -> str:
    """The option of parameter ``name``: ``--`` and its command-line name with dashes
    (a switch also has ``--no-<name>``)."""
    return "--" + option_dest(cls, name).replace("_", "-")


def option_args(cls: type, name: str, value: Any) -> list[str]:
    """The command-line words that set parameter ``name`` to ``value`` through its
    generated option (the inverse of parsing it): ``["--epochs", "7"]``, a switch
    ``["--calibration"]`` or ``["--no-calibration"]``; ``[]`` for None (the option not
    given).  Floats are written with ``repr`` so that they parse back exactly."""
    flag = option_flag(cls, name)
    if value is None:
        return []
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, float):
        return [flag, repr(value)]
    return [flag, str(value)]


def _declares_rule(meta: Mapping[str, Any]) -> bool:
    """True when a field's declaration states what values it takes (then it is checked)."""
    return bool(meta) and bool({"help", "choices", "lo", "hi", "odd", "check"} & set(meta))


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Base of the engines' configurations (frozen dataclasses).

    Subclasses declare their fields, check them in :meth:`validate` with
    :func:`need`, :func:`check_int`, :func:`check_number` and
    :func:`check_choice`, and list their run-time options in ``RUNTIME``.
    """

    #: Fields that say how a run executes, not what a model is (not saved in model files).
    RUNTIME: ClassVar[tuple[str, ...]] = ()
    #: Name used in messages about unknown keys.
    LABEL: ClassVar[str] = "configuration"

    def __post_init__(self) -> None:
        # Accept numpy integers (widgets, arrays) but store plain ints.
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, numbers.Integral) and not isinstance(v, bool | int):
                object.__setattr__(self, f.name, int(v))
        self.validate()

    def validate(self) -> None:
        """Check every declared field (:func:`param`), then the cross-field rules of
        :meth:`check`; raise :class:`ConfigError` naming the field."""
        for f in dataclasses.fields(self):
            if _declares_rule(f.metadata):
                check_declared(type(self), f.name, getattr(self, f.name))
        self.check()

    def check(self) -> None:
        """Rules that involve several fields (subclasses; the declarations cover the rest)."""

    # ------------------------------------------------------------------ keys
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all parameters, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def check_keys(cls, keys: Iterable[str]) -> None:
        """Raise :class:`ConfigError` for the first key that is not a parameter."""
        names = cls.field_names()
        for key in keys:
            if key in names:
                continue
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown {cls.LABEL} parameter {key!r}{hint}; valid: "
                              f"{', '.join(names)}")

    # ------------------------------------------------------------------ dicts
    def to_dict(self) -> dict[str, Any]:
        """All parameters as a plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a {cls.LABEL} must be a mapping, got {type(d).__name__}")
        cls.check_keys(d)
        return cls(**d)

    def replace(self: C, **changes: Any) -> C:
        """Copy with some parameters changed (checked again; unknown keys raise)."""
        self.check_keys(changes)
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ model files
    def model_dict(self) -> dict[str, Any]:
        """What a model file saves: :meth:`to_dict` without the run-time options."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME}

    def runtime_dict(self) -> dict[str, Any]:
        """The run-time options only."""
        return {k: v for k, v in self.to_dict().items() if k in self.RUNTIME}

    @classmethod
    def from_model_dict(cls: type[C], d: Mapping[str, Any], **runtime: Any) -> C:
        """Build from a model file's config: run-time options saved by older
        versions are dropped (defaults or ``runtime`` apply); unknown keys raise."""
        cls.check_keys(runtime)
        kept = {k: v for k, v in dict(d).items() if k not in cls.RUNTIME}
        return cls.from_dict({**kept, **runtime})


# ---------------------------------------------------------------------------- parameter files
#: Written into parameter files, so a file says which engine it is for.
PARAMS_FORMAT = "napari-duet parameters"


def save_params(path, config: EngineConfig, **sections: Any) -> Path:
    """Write ``config`` as a parameter file (JSON): what "Save parameters…" in a widget
    writes and ``duet <engine> --config FILE`` reads back.  Run-time options (device,
    threads, …) are included: the file repeats the run.  ``sections``: more JSON-able
    entries beside the parameters (denoiSplit's network preset), read back by
    :func:`read_params`."""
    from .io import write_json

    path = Path(path)
    write_json(path, {"format": PARAMS_FORMAT, "engine": config.LABEL,
                      "parameters": config.to_dict(), **sections})
    return path


def load_params(path, cls: type[C]) -> dict[str, Any]:
    """The parameters of a parameter file for config class ``cls`` (a dict to update a
    config with); a file that is not JSON, is for another engine or names an unknown
    parameter raises :class:`ConfigError` with one line.  A plain JSON object of parameters
    is accepted too."""
    return read_params(path, cls)[0]


def read_params(path, cls: type[C]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(parameters, sections)`` of a parameter file: :func:`load_params`'s dict and the
    other entries :func:`save_params` wrote beside it (empty for a plain JSON object)."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"parameter file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"parameter file {path.name} is not readable JSON: {reason}") from None
    sections: dict[str, Any] = {}
    if isinstance(data, dict) and data.get("format") == PARAMS_FORMAT:
        if data.get("engine") != cls.LABEL:
            raise ConfigError(f"parameter file {path.name} is for {data.get('engine')!r}, "
                              f"not {cls.LABEL}")
        sections = {k: v for k, v in data.items()
                    if k not in ("format", "engine", "parameters")}
        data = data.get("parameters")
    if not isinstance(data, dict):
        raise ConfigError(f"parameter file {path.name} must hold a JSON object of "
                          f"{cls.LABEL} parameters")
    cls.check_keys(data)
    return data, sections
