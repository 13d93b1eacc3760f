"""mrl.core.validate: every branch of every validator, with the exact one-line messages."""

import ast
import inspect
import sys

import numpy as np
import pytest
import torch

import mrl.core.validate as V
from mrl.core.errors import MRLError
from mrl.core.validate import (
    as_labels,
    as_matrix,
    as_sizes,
    integer,
    is_int,
    is_number,
    number,
    positive_int,
    seed_int,
    to_numpy,
)


def message(fn, *args, **kwargs) -> str:
    with pytest.raises(MRLError) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- predicates


@pytest.mark.parametrize("value", [0, 7, -3, np.int64(5), np.int8(-1), np.uint16(3)])
def test_is_int_accepts_python_and_numpy_integers(value):
    assert is_int(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 2.0, np.float32(2), "3", None])
def test_is_int_rejects_bools_floats_strings(value):
    assert not is_int(value)


@pytest.mark.parametrize("value", [0, 2.5, np.float32(0.5), np.int64(3), float("nan")])
def test_is_number_accepts_reals(value):
    assert is_number(value)


@pytest.mark.parametrize("value", [True, np.bool_(False), "0.5", None, [1.0], 1j])
def test_is_number_rejects_bools_and_non_reals(value):
    assert not is_number(value)


# ----------------------------------------------------------------------------- integers


def test_integer_returns_plain_int():
    for value in (3, np.int64(3), np.uint8(3)):
        out = integer(value, "n", min=1, max=3)
        assert out == 3 and type(out) is int
    assert integer(-10, "n") == -10  # no bounds: any integer


@pytest.mark.parametrize(
    "value, kwargs, expected",
    [
        (True, {"min": 1}, "n=True must be a positive integer"),
        (False, {}, "n=False must be an integer"),
        (2.0, {"min": 0}, "n=2.0 must be an integer >= 0"),
        ("4", {"min": 1}, "n='4' must be a positive integer"),
        (None, {"min": 1}, "n=None must be a positive integer"),
        (0, {"min": 1}, "n=0 must be a positive integer"),
        (-1, {"min": 0}, "n=-1 must be an integer >= 0"),
        (1, {"min": 2}, "n=1 must be an integer >= 2"),
        (9, {"max": 8}, "n=9 must be an integer <= 8"),
        (0, {"min": 1, "max": 16}, "n=0 must be an integer in 1..16"),
        (17, {"min": 1, "max": 16}, "n=17 must be an integer in 1..16"),
        (np.int64(17), {"min": 1, "max": 16}, "n=np.int64(17) must be an integer in 1..16"),
    ],
)
def test_integer_messages(value, kwargs, expected):
    assert message(integer, value, "n", **kwargs) == expected


def test_integer_hint_is_appended():
    msg = message(integer, 0, "truncate: m", min=1, max=4, hint="(the width)")
    assert msg == "truncate: m=0 must be an integer in 1..4 (the width)"


def test_positive_int_and_seed_int_keep_their_messages():
    assert positive_int(np.int32(2), "k") == 2
    assert seed_int(0) == 0
    assert message(positive_int, 0, "k") == "k=0 must be a positive integer"
    assert message(positive_int, True, "k") == "k=True must be a positive integer"
    assert message(positive_int, 2.5, "k") == "k=2.5 must be a positive integer"
    assert message(seed_int, -1) == "seed=-1 must be an integer >= 0"
    assert message(seed_int, False, "rng") == "rng=False must be an integer >= 0"


# ----------------------------------------------------------------------------- arrays


def test_number_returns_a_float_and_names_the_bad_value():
    assert number(np.float32(0.5), "x") == 0.5 and type(number(2, "x")) is float
    assert number(0, "optim.weight_decay") == 0.0
    assert message(number, 0, "optim.lr", positive=True) == "optim.lr=0 must be a positive number"
    for bad in (-1, float("nan"), float("inf"), True, "0.1", None):
        assert message(number, bad, "s") == f"s={bad!r} must be a finite number >= 0"
        assert message(number, bad, "s", positive=True) == f"s={bad!r} must be a positive number"


def test_to_numpy_converts_lists_and_tensors():
    out = to_numpy([[1, 2], [3, 4]], "x")
    assert out.dtype == np.float32 and out.shape == (2, 2)
    t = torch.ones(2, 3, requires_grad=True)
    assert to_numpy(t, "x").dtype == np.float32
    assert to_numpy(torch.ones(2, dtype=torch.bfloat16), "x", np.float64).dtype == np.float64
    assert to_numpy(torch.arange(3), "y", None).dtype == np.int64  # dtype=None keeps it


def test_to_numpy_rejects_non_numeric():
    msg = message(to_numpy, [["a", "b"]], "x")
    assert msg.startswith("x of type list is not a numeric array: ")
    assert "could not convert string to float" in msg


def test_as_matrix_casts_and_makes_contiguous():
    x = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]
    out = as_matrix(x, "x")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x)
    assert as_matrix(torch.ones(2, 3), "x", np.float64).dtype == np.float64


@pytest.mark.parametrize(
    "x, shape",
    [(np.zeros(5), "(5,)"), (np.zeros((0, 3)), "(0, 3)"), (np.zeros((3, 0)), "(3, 0)")],
)
def test_as_matrix_wrong_shape(x, shape):
    assert message(as_matrix, x, "train_x") == (
        f"train_x has shape {shape}; expected a non-empty 2-D array (rows, dims)"
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_as_matrix_names_the_first_non_finite_row(bad):
    x = np.zeros((6, 3), dtype=np.float32)
    x[4, 1] = bad
    x[5, 0] = np.nan
    assert message(as_matrix, x, "queries") == (
        "queries holds NaN or infinite values (first at row 4); expected finite numbers"
    )


def test_as_matrix_scans_blocks_for_the_bad_row(monkeypatch):
    monkeypatch.setattr(V, "_SCAN_ELEMENTS", 6)  # two rows of 3 per block
    x = np.ones((9, 3))
    x[7, 2] = np.inf
    assert "(first at row 7)" in message(as_matrix, x, "x", np.float64)


def test_as_matrix_accepts_large_finite_values_whose_sum_overflows():
    x = np.full((4, 2), 3e38, dtype=np.float32)  # finite, but the float32 sum is inf
    assert as_matrix(x, "x").shape == (4, 2)


def test_as_matrix_non_numeric():
    assert "features of type list is not a numeric array" in message(
        as_matrix, [["x", "y"]], "features"
    )


# ----------------------------------------------------------------------------- labels


def test_as_labels_returns_int64():
    for y in ([0, 2, 1], np.array([0, 2, 1], dtype=np.uint8), torch.tensor([0, 2, 1])):
        out = as_labels(y, 3, "y", num_classes=3)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, [0, 2, 1])
    assert as_labels(np.zeros(0, dtype=np.int64), 0, "y", num_classes=2).shape == (0,)


@pytest.mark.parametrize(
    "y, n, expected",
    [
        (np.zeros((2, 2), dtype=int), 4, "y has shape (2, 2); expected a 1-D vector of 4 labels"),
        (np.zeros(3, dtype=int), 4, "y has shape (3,); expected a 1-D vector of 4 labels"),
        (np.zeros(2), 2, "y has dtype float64; expected integer class labels"),
        (np.array([True, False]), 2, "y has dtype bool; expected integer class labels"),
        (np.array(["cat", "dog"]), 2, "y has dtype <U3; expected integer class labels"),
        (["cat", "dog"], 2, "y has dtype <U3; expected integer class labels"),
        (np.array([0, -2, -1]), 3, "y has a negative label -2; labels are 0..C-1"),
    ],
)
def test_as_labels_rejects(y, n, expected):
    assert message(as_labels, y, n, "y") == expected


@pytest.mark.parametrize("y, lo, hi", [([0, 4, 1], 0, 4), ([-1, 0, 3], -1, 3)])
def test_as_labels_range_with_num_classes(y, lo, hi):
    assert message(as_labels, np.array(y), 3, "test_y", 4) == (
        f"test_y has labels in [{lo}, {hi}]; with num_classes=4 they must lie in 0..3"
    )


# ----------------------------------------------------------------------------- sizes


def test_as_sizes():
    assert as_sizes([8, 16, "...", 64], "dims") == [8, 16, 32, 64]
    assert as_sizes(np.array([4, 8]), "ranks") == [4, 8]
    assert as_sizes((np.int64(2), np.int32(3)), "dims") == [2, 3]
    assert as_sizes(5, "dims") == [5]


@pytest.mark.parametrize(
    "sizes, fragment",
    [
        ([8, 4], "ranks=[8, 4]: dims must be strictly increasing"),
        ([0, 4], "ranks=[0, 4]: 0 is not a positive dimension"),
        ([8, True], "ranks=[8, True]: True is not a dimension"),
        ([], "ranks=[] is empty"),
        (3.5, "ranks=3.5: expected a list of positive integers"),
    ],
)
def test_as_sizes_messages_name_the_argument(sizes, fragment):
    msg = message(as_sizes, sizes, "ranks")
    assert msg.startswith(fragment) and "mrl.dims" not in msg


# ----------------------------------------------------------------------------- one module


def test_module_imports_only_numpy_stdlib_and_mrl_errors():
    tree = ast.parse(inspect.getsource(V))
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add(node.module if node.module.startswith("mrl") else node.module.split(".")[0])
    allowed = {"__future__", "numpy", "mrl.core.errors", "mrl.core.dims"} | set(
        sys.stdlib_module_names
    )
    assert top <= allowed, top - allowed
    assert "torch" not in top


def test_call_sites_use_the_shared_validators():
    import mrl.baselines._common as common
    import mrl.eval._checks as checks
    from mrl.baselines import svd
    from mrl.eval import search

    for dup in ("as_matrix", "as_labels", "positive_int", "seed_int", "to_numpy", "as_sizes"):
        assert not hasattr(checks, dup) and not hasattr(common, dup)
    assert search.as_matrix is as_matrix and svd.as_labels is as_labels
    # the evaluators now reject NaN the way the baselines always did
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 0] = np.nan
    assert message(search.exact_search, x, np.ones((1, 3)), 1) == (
        "database holds NaN or infinite values (first at row 2); expected finite numbers"
    )
