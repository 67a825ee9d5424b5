"""``python -m bench [--quick] [--out bench/results/bench.json]``: see bench/README.md."""

from .run import main

raise SystemExit(main())
