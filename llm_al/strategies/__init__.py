"""Selection strategies: `base` (Selection, top_k, the STRATEGIES registry, run_strategy), one module
per family, and `kernels/` (k-center, k-means, facility location and k-NN graphs at any pool size).

A family registers its strategies (and the probes that score for them) with decorators when its
module is imported; importing this package imports every family, so `STRATEGIES` is complete once
any `llm_al.strategies.*` module is imported. A new family is one new module here plus one line below.
"""

from llm_al.strategies import base  # noqa: F401  (first: the families import its registry)
from llm_al.strategies import (diversity, generation, lexical, mc, rds, reference_overlap, stream,  # noqa: F401
                               uncertainty, windows)
