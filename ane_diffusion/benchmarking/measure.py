"""Timing: warm-up, then the median of repeated runs, components and whole images alike.

Whole images go through the real :meth:`Pipeline.text_to_image` (tokenizer, text encoder,
sampler, UNet, VAE decode, conversion to PIL). The backend is wrapped in :class:`CountingBackend`,
so the evaluations per image (calls and batch sizes of each network) are read off the run rather
than assumed. Repeats are interleaved across configurations (baseline 20, baseline 50, student 1,
...) so that a slow spell of a shared machine hits every configuration alike instead of one.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ane_diffusion.decoders import has_tiny


class CountingBackend:
    """A backend that counts its calls per (component, batch) and forwards everything else."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: Counter = Counter()

    @property
    def name(self) -> str:
        return self.inner.name

    def reset(self) -> None:
        self.calls = Counter()

    def encode_text(self, input_ids):
        self.calls[("text_encoder", int(input_ids.shape[0]))] += 1
        return self.inner.encode_text(input_ids)

    def predict(self, sample, timestep, hidden, w=None):
        self.calls[("unet", int(sample.shape[0]))] += 1
        return self.inner.predict(sample, timestep, hidden, w)

    def decode(self, latents, decoder: str = "full"):
        name = "vae_decode" if decoder == "full" else f"vae_decode_{decoder}"
        self.calls[(name, int(latents.shape[0]))] += 1
        return self.inner.decode(latents, decoder)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def stats(times) -> dict:
    times = [float(t) for t in times]
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


@dataclass
class Subject:
    role: str
    """``baseline`` or ``student``."""
    pipeline: object
    sampler: str
    w: float
    decoder: str = "full"
    """``full`` (the bundle's VAE) or ``tiny`` (its distilled tiny decoder)."""


def latent_shape(pipeline) -> tuple:
    bundle = pipeline.bundle
    f = bundle.vae_scale_factor
    return (bundle.latent_channels, bundle.default_size // f, bundle.default_size // f)


def component_calls(baseline: Subject | None, student: Subject | None, prompt: str, seed: int = 0) -> dict:
    """``{name: (batch, call)}``: one call of each network with the pipeline's input shapes.

    Text encoder and VAE decode run on the student's backend (on the torch backend the teacher
    shares those modules); the teacher UNet call is the batch-2 guidance call. The UNet calls take
    the hidden states of the latest text-encoder call, so the text encoder is the first network
    ever called here and its first call (on Core ML: compilation) is timed like the others.
    """
    rng = np.random.default_rng(seed)
    main = student or baseline
    backend = _raw(main.pipeline.backend)
    ids = main.pipeline.tokenizer.encode_batch([prompt])
    shape = latent_shape(main.pipeline)
    state = {}

    def encode():
        state["hidden"] = backend.encode_text(ids)
        state.pop("hidden2", None)

    def hidden(batch: int):
        if batch == 1:
            return state["hidden"]
        if "hidden2" not in state:
            state["hidden2"] = np.concatenate([state["hidden"]] * batch)
        return state["hidden2"]

    calls = {"text_encoder": (1, encode)}
    if baseline is not None:
        teacher = _raw(baseline.pipeline.backend)
        z2 = rng.standard_normal((2, *shape)).astype(np.float32)
        calls["unet_teacher"] = (2, lambda: teacher.predict(z2, 500, hidden(2)))
    if student is not None:
        z1 = rng.standard_normal((1, *shape)).astype(np.float32)
        w = np.full(1, student.w, np.float32)
        calls["unet_student"] = (1, lambda: backend.predict(z1, 500, hidden(1), w))
    z = rng.standard_normal((1, *shape)).astype(np.float32)
    calls["vae_decode"] = (1, lambda: backend.decode(z))
    if has_tiny(main.pipeline.bundle):
        calls["vae_decode_tiny"] = (1, lambda: backend.decode(z, decoder="tiny"))
    return calls


def _raw(backend):
    return backend.inner if isinstance(backend, CountingBackend) else backend


def time_components(calls: dict, warmup: int, repeats: int, log=None) -> dict:
    """Median of ``repeats`` timed calls of each component after ``warmup`` untimed ones."""
    first = {}
    for name, (_, call) in calls.items():  # in order: the text encoder first
        for i in range(warmup):
            start = time.perf_counter()
            call()
            if i == 0:
                first[name] = time.perf_counter() - start
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (_, call) in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    out = {}
    for name, (batch, _) in calls.items():
        out[name] = {"batch": batch, **stats(times[name])}
        if name in first:
            out[name]["first_call_s"] = first[name]
        if log:
            log(f"{name} (batch {batch}): median {out[name]['median_s'] * 1000:.1f} ms")
    return out


def time_images(plan, prompt: str, warmup: int, repeats: int, log=None) -> list[dict]:
    """Whole images through ``Pipeline.text_to_image`` for each ``(subject, steps)`` of ``plan``."""
    from ane_diffusion.pipeline import Settings

    def one(subject: Subject, steps: int, seed: int):
        backend = subject.pipeline.backend
        backend.reset()
        with warnings.catch_warnings():  # "distilled for N steps; M may look worse": latency only here
            warnings.filterwarnings("ignore", message="this student was distilled for")
            result = subject.pipeline.text_to_image(prompt, Settings(steps=steps, w=subject.w, sampler=subject.sampler,
                                                                     seed=seed, decoder=subject.decoder))
        return result.timings, dict(backend.calls)

    if warmup:  # the sampler code paths (diffusers' scheduler for dpmpp-2m) on their first use
        for subject in {id(s): s for s, _ in plan}.values():
            one(subject, 1, 0)
    records = [{"subject": s, "steps": n, "timings": [], "calls": None} for s, n in plan]
    for r in range(repeats):
        for record in records:
            timings, calls = one(record["subject"], record["steps"], seed=r)
            record["timings"].append(timings)
            if record["calls"] is not None and record["calls"] != calls:
                raise RuntimeError(f"evaluations changed between runs: {record['calls']} vs {calls}")
            record["calls"] = calls
    results = []
    for record in records:
        subject, timings = record["subject"], record["timings"]
        entry = {"role": subject.role, "steps": record["steps"], "sampler": subject.sampler, "w": subject.w,
                 "decoder": subject.decoder,
                 "evaluations": [{"component": c, "batch": b, "calls": k}
                                 for (c, b), k in sorted(record["calls"].items())],
                 "unet_calls": timings[0].unet_calls,
                 "total": stats([t.total for t in timings]),
                 "text_encoder_s": statistics.median(t.text_encoder for t in timings),
                 "unet_s": statistics.median(t.unet for t in timings),
                 "vae_decode_s": statistics.median(t.vae_decode for t in timings),
                 "vae_share": statistics.median(t.vae_decode / t.total for t in timings)}
        entry["other_s"] = max(entry["total"]["median_s"] - entry["text_encoder_s"] - entry["unet_s"]
                               - entry["vae_decode_s"], 0.0)
        results.append(entry)
        if log:
            log(f"{subject.role} {record['steps']} steps, {subject.decoder} decoder: median "
                f"{entry['total']['median_s']:.3f}s per image")
    return results
