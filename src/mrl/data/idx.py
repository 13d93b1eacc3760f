"""Reader for the IDX format of MNIST / Fashion-MNIST (``*-idx3-ubyte[.gz]``).

Layout: two zero bytes, a type code, the number of dimensions ``n``, then ``n`` big-endian
uint32 sizes and the data in C order. Gzipped files are recognised by their magic bytes, not
their name.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from mrl.core.errors import MRLError

_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """File contents (gunzipped when gzipped) and whether a gzip stream ended early."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise MRLError(f"cannot read IDX file {path}: {e.strerror or e}") from e
    if raw[:2] != b"\x1f\x8b":
        return raw, False
    out: list[bytes] = []
    truncated = False
    while raw:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out.append(d.decompress(raw))
        except zlib.error:
            truncated = True
            break
        if not d.eof:
            truncated = True
            break
        raw = d.unused_data.lstrip(b"\x00")  # further gzip members, if any
    return b"".join(out), truncated


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into a native-endian numpy array.

    Raises :class:`MRLError` naming the path when the file is not IDX (bad magic) or its data
    does not match the sizes in its header (expected vs found bytes), e.g. a truncated download.
    """
    path = Path(path)
    data, truncated = _read_bytes(path)
    note = " (gzip stream ends early)" if truncated else ""
    if len(data) < 4:
        raise MRLError(
            f"IDX file {path} is truncated{note}: expected at least a 4-byte header, "
            f"found {len(data)} bytes"
        )
    zero, code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or code not in _TYPES or ndim == 0:
        raise MRLError(
            f"{path} is not an IDX file: magic bytes {data[:4].hex()} (expected 0000 followed by "
            f"a type code in {', '.join(f'{c:02x}' for c in _TYPES)} and a dimension count >= 1)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MRLError(
            f"IDX file {path} is truncated{note}: expected a {header}-byte header, "
            f"found {len(data)} bytes"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _TYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        raise MRLError(
            f"IDX file {path} is truncated or malformed{note}: header shape {tuple(dims)} needs "
            f"{expected} data bytes, found {found}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)
