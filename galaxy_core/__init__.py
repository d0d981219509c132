"""Galaxy Zoo morphology classification: Spiral, Elliptical or Uncertain.

The package is a house of floors; each imports only the floors below it (tests/test_layout.py
holds that):

- ``base``: settings dataclasses, error types, validated text fields, atomic writes.
- ``sources``: what comes from outside: HTTP fetches and the host policy, Galaxy Zoo
  catalogues, SDSS cutouts, downloads, decoding untrusted image files, the dataset folder.
- ``data``: what a model reads: the packed image cache, splits and balancing, framing,
  input geometry, normalisation.
- ``model``: the network, its typed card, saved bundles, precision, the metrics a card records.
- ``serving``: a trained model answering: inference with test-time views, evaluate, predict,
  Grad-CAM, the shipped examples.
- ``training``: the training loop, its batches, checkpoints and distributed set-up.
- ``cli`` and ``terminal``: ``python -m galaxy_core`` / ``galaxy-classification``.

Importing the package itself loads nothing heavy (no torch), so ``--help`` answers at once.
"""

__version__ = "1.0.0"
