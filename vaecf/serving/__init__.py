"""Serving: recommendations for new users from a trained workdir, a baseline or an export.

  from vaecf import serving
  rec = serving.from_workdir('/tmp/vaecf-default')    # best checkpoint; step=N for another
  rec.recommend([1, 3114, 4886], n=10)
  serving.export(rec, '/tmp/vaecf-default/export')    # jax.export, no training code needed
  serving.load_exported('/tmp/vaecf-default/export')

  recommender.py  the Recommender (histories of original ids -> top-N); no model code
  load.py         from_workdir: a trained run or a saved baseline
  export.py       export / load_exported (jax.export)
  cli.py          the command (vaecf-recommend, python -m vaecf.serving)

Training code is imported only when a workdir is opened; training never imports this.
"""
from vaecf.serving.export import export, load_exported
from vaecf.serving.load import from_workdir
from vaecf.serving.recommender import Recommendations, Recommender

__all__ = ['Recommender', 'Recommendations', 'from_workdir', 'export', 'load_exported']
