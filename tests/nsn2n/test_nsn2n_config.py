import pytest

from napari_duet import DuetInputError
from napari_duet.nsn2n import NSN2NConfig


def test_defaults_match_contract():
    c = NSN2NConfig()
    assert (c.lambda_rc, c.lambda_ic, c.device, c.seed) == (0.5, 1.0, "auto", 0)
    assert c.guide in ("gaussian", "nlm", "bilateral")


def test_round_trip_and_unknown_keys_ignored():
    c = NSN2NConfig(iterations=12, width=8, guide="nlm", tau=0.02)
    d = c.to_dict()
    assert NSN2NConfig.from_dict({**d, "from_the_future": 1}) == c
    assert c.replace(width=4).width == 4


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
