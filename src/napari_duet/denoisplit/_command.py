"""The ``duet split train`` command line of a training set up elsewhere (the Split widget).

It only writes arguments (no argparse): the CLI parses them back with
:func:`napari_duet.cli._split.train_configs`, the test checks the round trip.
"""

from __future__ import annotations

from ..core.config import option_args, user_params
from ..core.errors import DuetInputError

# TrainConfig fields whose generated ``duet split train`` option is left out of the
# command: --threads belongs to the machine the command runs on; ``resume`` has no option
# (the CLI resumes whenever --checkpoint is given).
_NOT_WRITTEN = ("threads",)


def command_line(config, train_config, channels, output: str = "model.duet", *,
                 denoiser: str = "auto") -> list[str]:
    """The ``duet split train`` arguments that train with ``config`` and ``train_config``.

    The inverse of :func:`napari_duet.cli._split.train_configs`: parsing the result with
    :func:`napari_duet.cli.build_parser` gives back the same configurations.
    Run-time options of this machine (``--threads``) keep the command's defaults.

    Parameters
    ----------
    config : SplitConfig
        A preset network (small or default) with its channel count and lateral context.
    train_config : TrainConfig
    channels : sequence of str
        One file per structure, in order (``--channel-a/-b`` for two).
    output : str
        The model file (``-o``).
    denoiser : str
        How noise models are bootstrapped (``--denoiser``).

    Raises
    ------
    DuetInputError
        When a setting has no command-line option (a custom network, a training
        field the command does not expose).
    """
    from ..denoisplit._config import SplitConfig, TrainConfig

    n = config.n_channels
    preset = config.preset_name()
    if preset is None:
        raise DuetInputError("this network is not a preset (small or default): no command line")
    default, tc = TrainConfig(), train_config
    options = [name for name in user_params(TrainConfig) if name not in _NOT_WRITTEN]
    fixed = [name for name in TrainConfig.field_names()
             if name not in (*options, *_NOT_WRITTEN, "resume")
             and getattr(tc, name) != getattr(default, name)]
    if fixed:
        raise DuetInputError("no command-line option for " + ", ".join(fixed))
    if tc.resume != (tc.checkpoint_path is not None):
        raise DuetInputError("--checkpoint always resumes: no command line for a "
                             "checkpoint without resume")
    channels = [str(c) for c in channels]
    if len(channels) != n:
        raise DuetInputError(f"{n} channels in the network, {len(channels)} files")
    argv = ["duet", "split", "train"]
    if n == 2:
        argv += ["--channel-a", channels[0], "--channel-b", channels[1]]
    else:
        argv += [x for c in channels for x in ("--channel", c)]
    argv += ["-o", str(output), "--config", preset]
    if config.multiscale_count != SplitConfig.preset(preset).multiscale_count:
        argv += ["--lateral-context", str(config.multiscale_count)]
    # Every option from its declaration, in declaration order; a switch only when it is
    # off its default (None: the option is not given, which is the default).
    for name in options:
        value = getattr(tc, name)
        if not (isinstance(value, bool) and value == getattr(default, name)):
            argv += option_args(TrainConfig, name, value)
    if denoiser != "auto":
        argv += ["--denoiser", denoiser]
    return argv
