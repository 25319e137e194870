import pytest

from napari_duet import DuetInputError
from napari_duet.nsn2n import NSN2NConfig


def test_defaults_match_contract():
    c = NSN2NConfig()
    assert (c.lambda_rc, c.lambda_ic, c.device, c.seed) == (0.5, 1.0, "auto", 0)
    assert c.guide in ("gaussian", "nlm", "bilateral")


def test_round_trip_and_unknown_keys_rejected():
    c = NSN2NConfig(iterations=12, width=8, guide="nlm", tau=0.02)
    d = c.to_dict()
    assert NSN2NConfig.from_dict(d) == c
    assert c.replace(width=4).width == 4
    with pytest.raises(DuetInputError, match="unknown NS-N2N parameter 'from_the_future'"):
        NSN2NConfig.from_dict({**d, "from_the_future": 1})
    # A misspelt key is never dropped silently (it was, before).
    with pytest.raises(DuetInputError, match=r"'witdh' \(did you mean 'width'\?\)"):
        c.replace(witdh=4)


def test_model_dict_leaves_out_run_time_options():
    c = NSN2NConfig(width=8, tta=False, tile=64, device="cpu", preview_every=3)
    saved = c.model_dict()
    assert not set(saved) & {"tta", "tile", "device", "preview_every", "preview_index"}
    assert saved["width"] == 8
    # Older model files saved them too: dropped on loading, the defaults apply.
    back = NSN2NConfig.from_model_dict(c.to_dict())
    assert back == NSN2NConfig(width=8) and back.tta and back.tile == 512
    assert NSN2NConfig.from_model_dict(saved, device="cpu").device == "cpu"


@pytest.mark.parametrize(
    "kw",
    [{"iterations": 0}, {"width": 0}, {"lr": -1.0}, {"guide": "median"}, {"tau": 0.0},
     {"batch_size": 0}, {"crop_size": 4}, {"optimizer": "sgd"}, {"lambda_rc": -1.0},
     {"preview_every": -1}, {"iterations": 2.5}],
)
def test_invalid_values_raise_one_line(kw):
    with pytest.raises(DuetInputError) as e:
        NSN2NConfig(**kw)
    assert "\n" not in str(e.value)
