"""The ``duet split train`` command line of a training set up elsewhere (the Split widget).

It only writes arguments (no argparse): the CLI parses them back with
:func:`napari_duet.cli._split.train_configs`, the test checks the round trip.
"""

from __future__ import annotations

from ..core.errors import DuetInputError

# TrainConfig fields that ``duet split train`` options set
# (see :func:`napari_duet.cli._split.train_configs`).
_TRAIN_OPTIONS = ("epochs", "max_minutes", "patch_size", "batch_size", "steps_per_epoch",
                  "seed", "device", "likelihood", "kl", "calibrate", "checkpoint_path",
                  "resume")


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
    from dataclasses import fields

    from ..denoisplit._config import SplitConfig, TrainConfig

    n = config.n_channels
    preset = next((name for name in ("small", "default") if SplitConfig.preset(
        name, n_channels=n, multiscale_count=config.multiscale_count) == config), None)
    if preset is None:
        raise DuetInputError("this network is not a preset (small or default): no command line")
    default = TrainConfig()
    fixed = [f.name for f in fields(TrainConfig) if f.name not in _TRAIN_OPTIONS
             and getattr(train_config, f.name) != getattr(default, f.name)]
    if fixed:
        raise DuetInputError("no command-line option for " + ", ".join(fixed))
    channels = [str(c) for c in channels]
    if len(channels) != n:
        raise DuetInputError(f"{n} channels in the network, {len(channels)} files")
    argv = ["duet", "split", "train"]
    if n == 2:
        argv += ["--channel-a", channels[0], "--channel-b", channels[1]]
    else:
        argv += [x for c in channels for x in ("--channel", c)]
    tc = train_config
    argv += ["-o", str(output), "--config", preset]
    if config.multiscale_count != SplitConfig.preset(preset).multiscale_count:
        argv += ["--lateral-context", str(config.multiscale_count)]
    argv += ["--epochs", str(tc.epochs), "--patch-size", str(tc.patch_size),
             "--batch-size", str(tc.batch_size), "--seed", str(tc.seed), "--device", tc.device]
    if tc.steps_per_epoch is not None:
        argv += ["--steps-per-epoch", str(tc.steps_per_epoch)]
    if tc.max_minutes is not None:
        argv += ["--max-minutes", repr(float(tc.max_minutes))]
    if tc.likelihood != default.likelihood:
        argv += ["--likelihood", tc.likelihood]
    if tc.kl != default.kl:
        argv += ["--kl", tc.kl]
    if not tc.calibrate:
        argv.append("--no-calibration")
    if tc.checkpoint_path is not None:
        if not tc.resume:
            raise DuetInputError("--checkpoint always resumes: no command line for a "
                                 "checkpoint without resume")
        argv += ["--checkpoint", str(tc.checkpoint_path)]
    if denoiser != "auto":
        argv += ["--denoiser", denoiser]
    return argv
