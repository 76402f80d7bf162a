"""The ``parameters`` PNG text chunk that the popular Stable Diffusion UIs write and read.

The convention (AUTOMATIC1111's web UI, read by most other tools) is one text chunk named
``parameters``::

    a red circle on a blue background
    Negative prompt: blurry
    Steps: 4, Sampler: DDIM, CFG scale: 4.0, Seed: 7, Size: 64x64, Model: default, Guidance w: 3.0, ...

Line 1..k: the prompt (it may span lines); then an optional ``Negative prompt:`` line; the last
line holds ``Key: value`` pairs separated by ``", "`` (a value holding a comma or a colon is
written as a JSON string).

``CFG scale`` is the classifier-free guidance scale of those UIs, which is ``1 + w`` in this
project's (the paper's) convention (:func:`ane_diffusion.guidance.guidance_scale_from_w`); the
line carries ``Guidance w`` and ``Guidance convention: "CFG scale = 1 + w"`` beside it, so that
neither reader is misled. Our full JSON stays in its own chunk (:data:`ane_diffusion.images.METADATA_KEY`).
"""

from __future__ import annotations

import json
import re

from .guidance import guidance_scale_from_w

CHUNK = "parameters"
CONVENTION = "CFG scale = 1 + w"
SAMPLER_NAMES = {"ddim": "DDIM", "dpmpp-2m": "DPM++ 2M", "lcm": "LCM", "stochastic": "Stochastic (N-step)"}
"""Our sampler names as the UIs spell them (``stochastic`` has no counterpart there)."""
_SAMPLER_FROM_NAME = {v.lower(): k for k, v in SAMPLER_NAMES.items()} | {
    "dpm++ 2m karras": "dpmpp-2m", "dpm++ 2m": "dpmpp-2m", "ddim": "ddim", "lcm": "lcm"}
_PAIR = re.compile(r'\s*([\w .\-/]+?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


class ParametersError(ValueError):
    """A ``parameters`` text that does not follow the convention."""


def _quote(value) -> str:
    text = str(value)
    return json.dumps(text) if ("," in text or ":" in text or "\n" in text or '"' in text) else text


def format_parameters(meta: dict) -> str:
    """The ``parameters`` text of one image from its metadata dict (see ``Pipeline.metadata``)."""
    w = float(meta["w"])
    fields = {"Steps": meta["steps"], "Sampler": SAMPLER_NAMES.get(meta["sampler"], meta["sampler"]),
              "CFG scale": round(guidance_scale_from_w(w), 6), "Seed": meta["seed"],
              "Size": f"{meta['width']}x{meta['height']}", "Model": meta.get("model", ""),
              "Guidance w": round(w, 6), "Guidance convention": CONVENTION}
    if meta.get("strength") is not None:
        fields["Denoising strength"] = meta["strength"]
    for lora in meta.get("loras") or []:
        fields.setdefault("Lora", [])
        fields["Lora"].append(f"{lora['name']}:{lora['scale']}")
    if "Lora" in fields:
        fields["Lora"] = "; ".join(fields["Lora"])
    fields["Version"] = meta.get("generator", "ane-diffusion")
    lines = [meta.get("prompt", "")]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields.items()))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict:
    """Settings from a ``parameters`` text (ours or another tool's), in this project's terms.

    Returns a dict with ``prompt``, ``negative_prompt`` and those of ``steps``, ``w``, ``seed``,
    ``sampler``, ``height``, ``width``, ``model`` that the text holds. ``w`` comes from
    ``Guidance w`` when present, else ``CFG scale - 1``. Raises :class:`ParametersError` when the
    last line holds no ``Key: value`` pairs.
    """
    lines = text.strip("\n").split("\n")
    last = lines[-1]
    pairs = {key.strip(): value for key, value in _PAIR.findall(last)}
    if "Steps" not in pairs:
        raise ParametersError("the parameters text has no 'Steps: N, ...' line")
    pairs = {key: json.loads(value) if value.startswith('"') else value.strip() for key, value in pairs.items()}
    body = lines[:-1]
    negative_at = next((i for i, line in enumerate(body) if line.startswith("Negative prompt:")), len(body))
    out = {"prompt": "\n".join(body[:negative_at]),
           "negative_prompt": "\n".join(body[negative_at:])[len("Negative prompt:"):].strip()}
    try:
        out["steps"] = int(pairs["Steps"])
        if "Seed" in pairs:
            out["seed"] = int(pairs["Seed"])
        if "Guidance w" in pairs:
            out["w"] = float(pairs["Guidance w"])
        elif "CFG scale" in pairs:
            out["w"] = float(pairs["CFG scale"]) - 1.0
        if "Size" in pairs:
            width, height = pairs["Size"].lower().split("x")
            out["width"], out["height"] = int(width), int(height)
    except ValueError as exc:
        raise ParametersError(f"bad value in the parameters line: {exc}") from None
    if "Sampler" in pairs:
        out["sampler"] = _SAMPLER_FROM_NAME.get(pairs["Sampler"].lower(), pairs["Sampler"])
    if pairs.get("Model"):
        out["model"] = pairs["Model"]
    if "Denoising strength" in pairs:
        out["strength"] = float(pairs["Denoising strength"])
    return out


__all__ = ["CHUNK", "CONVENTION", "ParametersError", "format_parameters", "parse_parameters"]
