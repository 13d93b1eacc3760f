"""Turn any set of run dirs into the paper's tables.

    python scripts/aggregate.py RUN_DIR [RUN_DIR ...] --data fashion_mnist --dims 8,16,...,256

Every folder holding a run.json below the given dirs is read; failed or missing runs are
listed and their cells left empty (never invented). Writes <out>/table{1,2}_<data>.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import sys

from mrl.core.dims import parse_dims
from mrl.core.errors import MRLError
from mrl.results import write_tables


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("roots", nargs="+")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--dims", default="8,16,...,2048")
    p.add_argument("--out", default="results")
    a = p.parse_args(argv)
    try:
        dims = parse_dims(a.dims)
    except MRLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, path in write_tables(a.roots, a.out, a.data, dims).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
