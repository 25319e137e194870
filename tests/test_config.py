"""One configuration base for the three engines: unknown keys, one error type, run-time options."""

from __future__ import annotations

import numpy as np
import pytest

from napari_duet import DuetInputError
from napari_duet.core.config import ConfigError, EngineConfig
from napari_duet.denoisplit import SplitConfig, TrainConfig
from napari_duet.nsn2n import NSN2NConfig
from napari_duet.self2seg import Self2SegConfig

CONFIGS = [NSN2NConfig, Self2SegConfig, SplitConfig, TrainConfig]
# One valid field of each, misspelt, and a bad value for another.
TYPOS = {NSN2NConfig: ("widht", "width"), Self2SegConfig: ("n_clases", "n_classes"),
         SplitConfig: ("filter", "filters"), TrainConfig: ("epoch", "epochs")}
BAD = {NSN2NConfig: ("batch_size", 0), Self2SegConfig: ("max_alternations", 0),
       SplitConfig: ("filters", 0), TrainConfig: ("epochs", 0)}


@pytest.mark.parametrize("cls", CONFIGS)
def test_unknown_keys_are_rejected_naming_the_key_and_the_valid_ones(cls):
    typo, right = TYPOS[cls]
    cfg = cls()
    assert isinstance(cfg, EngineConfig)
    for call in (lambda: cls.from_dict({**cfg.to_dict(), typo: 1}),
                 lambda: cfg.replace(**{typo: 1})):
        with pytest.raises(ConfigError) as e:
            call()
        msg = str(e.value)
        assert f"{typo!r}" in msg and f"did you mean {right!r}" in msg, msg
        assert all(name in msg for name in cls.field_names()), msg
        assert "\n" not in msg
    assert cls.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(**{right: getattr(cfg, right)}) == cfg


@pytest.mark.parametrize("cls", CONFIGS)
def test_bad_values_raise_one_error_type_in_one_style(cls):
    name, value = BAD[cls]
    with pytest.raises(ConfigError, match=rf"^{name} must be .*, got {value!r}$"):
        cls(**{name: value})
    assert issubclass(ConfigError, DuetInputError)  # exit 2 / a notification
    with pytest.raises(ConfigError, match=name):
        cls().replace(**{name: value})  # replace validates again


@pytest.mark.parametrize("cls", CONFIGS)
def test_numpy_integers_are_stored_as_ints(cls):
    name = BAD[cls][0]
    cfg = cls(**{name: np.int64(3)})
    assert type(getattr(cfg, name)) is int


@pytest.mark.parametrize(("cls", "runtime"), [
    (NSN2NConfig, {"tta", "tile", "device", "threads", "preview_every", "preview_index"}),
    (Self2SegConfig, {"device", "threads"}),
    (TrainConfig, {"device", "threads", "log_every", "checkpoint_path", "resume"}),
    (SplitConfig, set()),
])
def test_model_dict_holds_no_run_time_option(cls, runtime):
    cfg = cls()
    assert set(cls.RUNTIME) == runtime
    assert set(cfg.model_dict()) == set(cls.field_names()) - runtime
    assert set(cfg.runtime_dict()) == runtime
    # Older files hold them: accepted and dropped; anything else unknown is refused.
    assert cls.from_model_dict(cfg.to_dict()) == cls()
    with pytest.raises(ConfigError, match="unknown"):
        cls.from_model_dict({**cfg.model_dict(), "not_a_field": 1})


def test_split_model_files_refuse_unknown_config_keys(tmp_path):
    import torch

    from napari_duet import ModelFileError
    from napari_duet.core.modelfile import save_model_file
    from napari_duet.denoisplit import SplitModel

    path = save_model_file(tmp_path / "m.duet", kind="denoisplit",
                           config={**SplitConfig.small().to_dict(), "filterz": 8},
                           tensors={"net.w": torch.zeros(2)}, extra={"patch_size": 16})
    with pytest.raises(ModelFileError, match="filterz"):
        SplitModel.load(path)
