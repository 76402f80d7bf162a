"""Editing benchmark of the demo models: image-to-image and inpainting judged by the attribute
evaluator (``benchmarks/editing.py``).

Modules:

* :mod:`benchmarks.editing.cases`: the edit cases. A real rendered train-split scene, one attribute
  to change (colour or shape), the target scene and its full caption with only that attribute
  changed; and the inpainting mask (the object's bounding box, dilated) with its helpers.
* :mod:`benchmarks.editing.harness`: the sweep (students at 2, 3 and 4 steps run, the guided
  teacher as a baseline), the judging and the JSON, markdown and PNG outputs.

The attribute evaluator is the quality harness's (:mod:`benchmarks.quality.evaluator`).
"""
