"""The IDX reader: round trips, gz detection, truncated and malformed files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from mrl.core.errors import MRLError
from mrl.data import read_idx
from mrl_data_helpers import write_idx


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_round_trip(tmp_path, gz, dtype):
    arr = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a-idx3-ubyte", arr, gz=gz)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 1  # writable


def test_gz_detected_by_magic_not_name(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    plain = write_idx(tmp_path / "labels", arr, gz=False)
    (tmp_path / "labels2").write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "labels2"), arr)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file_names_path_and_sizes(tmp_path, gz):
    arr = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", arr, gz=gz)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MRLError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert "3920" in msg  # expected data bytes = 5 * 28 * 28
    assert "found" in msg


def test_extra_bytes_are_malformed(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros(4, dtype=np.uint8), gz=False)
    path.write_bytes(path.read_bytes() + b"\x00\x00")
    with pytest.raises(MRLError, match=r"needs 4 data bytes, found 6"):
        read_idx(path)


@pytest.mark.parametrize(
    "content", [b"", b"\x00\x00", b"PK\x03\x04garbage", b"\x00\x00\x42\x01abcd"]
)
def test_not_idx(tmp_path, content):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(MRLError, match="bad-idx1-ubyte"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(MRLError, match="nope"):
        read_idx(tmp_path / "nope")
