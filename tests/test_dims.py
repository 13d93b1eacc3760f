"""parse_dims / parse_weights: every branch, including each error."""

import pytest
from omegaconf import OmegaConf

from mrl import MRLError, parse_dims
from mrl.core.dims import auto_dims, parse_weights


@pytest.mark.parametrize(
    "spec, width, expected",
    [
        ([8, 16, "...", 2048], None, [8, 16, 32, 64, 128, 256, 512, 1024, 2048]),
        ([12, 24, "...", 768], None, [12, 24, 48, 96, 192, 384, 768]),
        ([16, 48, "...", 144], None, [16, 48, 80, 112, 144]),  # not doubling: arithmetic
        ([4, 8, 16, "...", 64], None, [4, 8, 16, 32, 64]),  # progression from the 2 before ...
        ("8,16,...,64", None, [8, 16, 32, 64]),
        ("[8, 16, ..., 64]", None, [8, 16, 32, 64]),
        ([8, 16, "…", 32], None, [8, 16, 32]),
        ([8, 16, ..., 32], None, [8, 16, 32]),  # Python Ellipsis
        ([3, 7, 100], None, [3, 7, 100]),
        (64, None, [64]),
        ("auto", 2048, [8, 16, 32, 64, 128, 256, 512, 1024, 2048]),
        ("auto", 768, [12, 24, 48, 96, 192, 384, 768]),
        ("auto", 512, [8, 16, 32, 64, 128, 256, 512]),
        ("AUTO", 384, [12, 24, 48, 96, 192, 384]),
        ([8.0, 16], None, [8, 16]),
    ],
)
def test_parse_dims_valid(spec, width, expected):
    assert parse_dims(spec, width) == expected


def test_parse_dims_from_hydra_list():
    # Hydra parses mrl.dims=[8,16,...,2048] as [8, 16, '...', 2048]
    cfg = OmegaConf.create({"dims": [8, 16, "...", 2048]})
    assert parse_dims(cfg.dims)[-1] == 2048


def test_auto_dims_odd_width():
    assert auto_dims(100) == [25, 50, 100]  # halving stops at an odd width
    assert auto_dims(8) == [8]
    assert auto_dims(5) == [5]


@pytest.mark.parametrize(
    "spec, match",
    [
        ([], "is empty"),
        ("", "is empty"),
        (None, "None"),
        ([8, 8, 16], "duplicate"),
        ([16, 8], "strictly increasing"),
        ([0, 8], "not a positive"),
        ([-8, 16], "not a positive"),
        ([8, 16, "...", 100], "cannot reach 100"),
        ([16, 48, "...", 150], "cannot reach 150"),
        ([8, "...", 64], "'...' must appear once"),
        (["...", 8, 16], "'...' must appear once"),
        ([8, 16, "...", 32, 64], "'...' must appear once"),
        ([8, 16, "...", "...", 64], "'...' must appear once"),
        ([16, 8, "...", 64], "strictly increasing"),
        ([8, "x", 16], "'x' is not a dimension"),
        ([8, True], "not a dimension"),
        ([8, 16.5], "not a dimension"),
        ("auto", "needs the backbone width"),
        ({"a": 1}.items(), "not a dimension"),
        (3.5, "expected a list"),
    ],
)
def test_parse_dims_errors(spec, match):
    with pytest.raises(MRLError, match=match):
        parse_dims(spec)


def test_error_is_one_line_and_names_value():
    with pytest.raises(MRLError) as e:
        parse_dims([8, 16, "...", 100])
    msg = str(e.value)
    assert "\n" not in msg and "100" in msg and "mrl.dims" in msg


def test_parse_weights():
    assert parse_weights(None, [8, 16]) == [1.0, 1.0]
    assert parse_weights([2, 1], [8, 16]) == [2.0, 1.0]
    for bad, match in [
        ([1.0], "has 1 values but dims"),
        ([1, -1], "must be a finite number >= 0"),
        ([1, float("nan")], "must be a finite number"),
        ([0, 0], "at least one weight"),
        (["a", 1], "is not a number"),
        ("1,1", "give a list of 2"),
    ]:
        with pytest.raises(MRLError, match=match):
            parse_weights(bad, [8, 16])


def test_weights_mapping_sets_some_dims_others_one():
    from mrl.core.dims import parse_weights

    assert parse_weights({8: 2}, [8, 16, 32]) == [2.0, 1.0, 1.0]  # the paper's "8boost"
    assert parse_weights({"16": 0.5}, [8, 16, 32]) == [1.0, 0.5, 1.0]  # YAML / Optuna keys
    with pytest.raises(MRLError, match=r"12 is not one of the dims \[8, 16\]"):
        parse_weights({12: 1.0}, [8, 16])
    with pytest.raises(MRLError, match="must be a finite number >= 0"):
        parse_weights({8: -1}, [8, 16])
