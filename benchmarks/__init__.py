"""The benchmarks behind the speed figures quoted in ``benchmarks/README.md``.

They live in the repository, not in the installed ``helpers`` package: a learner training on
Colab never needs them. ``python -m helpers bench loader|train`` imports them from the
checkout.

* :mod:`benchmarks.loader`: is the decode-once cache worth it? (``bench loader``)
* :mod:`benchmarks.train`: how much faster does the engine train than the original's
  structure? (``bench train``)
* :mod:`benchmarks.variants`: what one training variant does, in its own process.
* :mod:`benchmarks.worker`: those processes, their line protocol and their memory.
"""
