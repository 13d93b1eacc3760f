"""``python -m scripts.bench`` (from the repository root): see :mod:`scripts.bench.runner`;
``python -m scripts.bench pareto ...`` runs :mod:`scripts.bench.pareto` (funnel retrieval)."""

import sys

if sys.argv[1:2] == ["pareto"]:
    from .pareto import main as pareto_main

    sys.exit(pareto_main(sys.argv[2:]))

from .runner import main  # noqa: E402

sys.exit(main())
