"""Quality harness for the demo models: an attribute evaluator, the Frechet distance and the
sweep that fills the paper's table (``benchmarks/quality.py``).

Modules:

* :mod:`benchmarks.quality.evaluator`: a small CNN that reads the five scene attributes (shape,
  colour, size, position, background) off a 32x32 image and exposes a feature vector; trained on
  real synthetic scenes, stored in ``benchmarks/quality/evaluator/`` (safetensors + JSON).
* :mod:`benchmarks.quality.frechet`: Frechet distance between two feature sets.
* :mod:`benchmarks.quality.harness`: the sweep over teacher / stage-1 / progressive rows and its
  JSON, markdown and PNG outputs.
"""
