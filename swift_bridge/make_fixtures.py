"""Golden vectors for the Swift bridge, computed by the Python package (the reference).

Run from the repository root::

    python swift_bridge/make_fixtures.py            # rewrites Tests/ANEDiffusionTests/Fixtures/
    python swift_bridge/make_fixtures.py --out DIR  # somewhere else (tests/test_swift_fixtures.py)

Deterministic: the same package gives the same files. What is written:

* ``tokenizer/vocab.json``, ``tokenizer/merges.txt``: a CLIP-format vocabulary that
  ``build_clip_vocab`` learns from the fixed corpus below; ``tokenizer.json``: the ids
  ``CLIPTokenizer.encode`` gives for edge-case prompts (or the error it raises).
* ``noise.json``: raw MT19937 outputs, doubles and float32 normals of ``NoiseSource``.
* ``guidance.json``: guidance embeddings; ``schedule.json``: alphas/sigmas, timestep grids,
  LCM scalings, parameterisation conversions.
* ``samplers.json``: sampler trajectories RECORDED from the Python pipeline's own denoiser and
  sampler code with a fixed pseudo-network: every model call's input latents, timestep, w and
  output. The Swift tests replay the outputs by call index and must reproduce every input and
  the final latents, so the Swift update rules (not a re-implementation of the network) are
  what is compared.
* ``pipeline.json``: whole ``Pipeline.text_to_image`` runs with scripted text encoder, UNet and
  decoder (their inputs and outputs recorded), the contract of that tiny model, and the pixels.
* ``contract_example.json``: a contract in the export format for a 512x512 student.
* ``contract_tiny_decoder.json``: the same with a tiny ``VAEDecoder`` / ``VAEEncoder`` and the full
  decoder kept as ``VAEDecoderFull`` (the optional ``decoders`` / ``encoders`` maps and ``variant``
  fields ``python -m ane_diffusion convert`` writes for a bundle with a tiny decoder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ane_diffusion.bundle import Bundle  # noqa: E402
from ane_diffusion.card import ModelCard  # noqa: E402
from ane_diffusion.guidance import embedding_frequencies, guidance_embedding  # noqa: E402
from ane_diffusion.noise import NoiseSource, batch_noise  # noqa: E402
from ane_diffusion.pipeline import Pipeline, Settings, Timings  # noqa: E402
from ane_diffusion.samplers import default_timesteps, lcm_boundary_scalings, lcm_timesteps  # noqa: E402
from ane_diffusion.schedule import (  # noqa: E402
    DiscreteSchedule, from_x0, to_eps, to_x0, trailing_timesteps,
)
from ane_diffusion.tokenizer import CLIPTokenizer, PromptTooLongError, build_clip_vocab, write_tokenizer_files  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "Tests" / "ANEDiffusionTests" / "Fixtures"

CORPUS = [
    "a small red circle at the top left on a blue background",
    "a large green square in the center of a white background",
    "two yellow triangles at the bottom right on a black background",
    "a photo of a cat sitting on a wooden table",
    "a photo of a dog running on the beach at sunset",
    "a watercolor painting of a mountain lake in the morning",
    "an oil painting of a ship on a stormy sea",
    "a close up photo of a red rose with water drops",
    "a blue car parked in front of a brick house",
    "a bowl of fresh fruit on a kitchen counter",
    "three purple stars in the sky above a small town",
    "a portrait of an old man with a white beard",
    "a city street at night with neon lights and rain",
    "an astronaut riding a horse on the moon",
    "it's a dog's life, isn't it? 4k, 8k, hdr!",
]

PROMPTS = [
    "a small red circle at the top left on a blue background",
    "an astronaut riding a horse on the moon",
    "a zebra eating quinoa in Reykjavik",
    "Hello, world! (really?) -- yes: 100% #1 @home",
    "4k 8K 1920x1080 3.14159 2024-01-31",
    "A PHOTO Of A Cat, In MiXeD CaSe",
    "   lots \t of\n\nwhite   space\u00a0and\u3000more   ",
    "",
    " ",
    "it's a dog's life, isn't it? they're, we've, I'm, you'll, he'd",
    "IT'S LOUD'S 'quoted' ''s !'s",
    "café crème brûlée, naïve résumé",
    "cafe\u0301 (decomposed accent)",
    "a cat 🐱 and a rocket 🚀 👩\u200d🚀",
    "日本語のテキスト and русский текст and العربية",
    "ΟΔΟΣ Σ İstanbul straße ½ ² ١٢٣",
    "control\x1cchars\x00and\u200bzero width\r\nnew line",
    "a cat<|endoftext|>a dog <|startoftext|> x",
    "<|ENDOFTEXT|>! <|endoftext|>!<|startoftext|><|endoftext|>",
    "<|endoftext",
    "....!!!???,,,;;;:::",
]

LONG_PROMPT = " ".join(CORPUS[i % len(CORPUS)].split()[i % 5] for i in range(100)) + " and a zebra"


# -- writing ---------------------------------------------------------------------------------

def floats(array) -> list:
    """Exact values: float32 and float64 both round-trip through Python's float repr."""
    return [float(v) for v in np.asarray(array).reshape(-1)]


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":"), ensure_ascii=True) + "\n", encoding="utf-8")


# -- tokenizer -------------------------------------------------------------------------------

def tokenizer_fixtures(out: Path) -> CLIPTokenizer:
    vocab, merges = build_clip_vocab(CORPUS)
    folder = out / "tokenizer"
    write_tokenizer_files(folder, vocab, merges)
    for extra in ("tokenizer_config.json", "special_tokens_map.json"):
        (folder / extra).unlink()  # the export folder carries vocab.json and merges.txt only
    tokenizer = CLIPTokenizer.from_files(folder / "vocab.json", folder / "merges.txt")

    cases = []

    def case(text, max_length=77, truncate=False):
        entry = {"text": text, "max_length": max_length, "truncate": truncate}
        try:
            entry["ids"] = tokenizer.encode(text, max_length=max_length, truncate=truncate)
        except PromptTooLongError:
            entry["error"] = "prompt_too_long"
            entry["tokens"] = tokenizer.count_tokens(text)
        cases.append(entry)

    for text in PROMPTS:
        case(text)
    case(LONG_PROMPT)
    case(LONG_PROMPT, truncate=True)
    case("a photo of a cat sitting on a wooden table", max_length=8)
    case("a photo of a cat sitting on a wooden table", max_length=8, truncate=True)
    case("a photo of", max_length=8)
    case("a photo of a", max_length=6)  # exactly fits: start + 4 words + end
    write_json(out / "tokenizer.json", {"cases": cases, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
                                        "pad_id": tokenizer.pad_id, "vocab_size": len(vocab),
                                        "merge_count": len(merges)})
    return tokenizer


# -- noise, guidance, schedule -----------------------------------------------------------------

def noise_fixtures(out: Path) -> None:
    raw = []
    for seed in (0, 1, 42, 5489, 2**32 - 1):
        state = np.random.RandomState(seed)
        raw.append({"seed": seed, "uint32": [int(v) for v in state._bit_generator.random_raw(8)],
                    "doubles": floats(np.random.RandomState(seed).random_sample(4))})
    streams = []
    for seed, shapes in ((0, [[1, 4, 4, 4]]), (7, [[3], [5], [1, 2, 2], [2, 3]]), (123456789, [[2, 2, 3]]),
                         (2**32 - 1, [[9]])):
        source = NoiseSource(seed)
        streams.append({"seed": seed, "draws": [{"shape": shape, "values": floats(source.normal(shape))}
                                                for shape in shapes]})
    # A full-size latent, checked by a few statistics and samples instead of 16384 values.
    big = NoiseSource(2024).normal((1, 4, 64, 64))
    flat = big.reshape(-1)
    indices = [0, 1, 2, 3, 1000, 8191, 8192, 16382, 16383]
    large = {"seed": 2024, "shape": [1, 4, 64, 64], "sum": float(big.astype(np.float64).sum()),
             "sum_of_squares": float((big.astype(np.float64) ** 2).sum()),
             "indices": indices, "values": floats(flat[indices])}
    latents, _ = batch_noise(11, 3, (2, 2, 2))
    write_json(out / "noise.json", {"raw": raw, "streams": streams, "large": large,
                                    "batch": {"seed": 11, "count": 3, "shape": [2, 2, 2],
                                              "latents": floats(latents)}})


def guidance_fixtures(out: Path) -> None:
    ws = [0.0, 0.5, 1.0, 3.0, 7.5, 8.0, 14.0]
    cases = [{"dim": dim, "w": w, "scale": scale, "embedding": floats(guidance_embedding(w, dim, scale)[0])}
             for scale in (1000.0, 1.0) for dim in (2, 3, 8, 33, 256) for w in ws]
    frequencies = {str(dim): floats(embedding_frequencies(dim)) for dim in (2, 4, 256, 320)}
    write_json(out / "guidance.json", {"cases": cases, "frequencies": frequencies})


def schedule_fixtures(out: Path) -> None:
    timesteps = [-1, 0, 1, 2, 10, 100, 249, 250, 499, 500, 749, 750, 998, 999]
    schedules = []
    for config in ({"beta_schedule": "scaled_linear"},
                   {"beta_schedule": "scaled_linear", "beta_start": 0.0001, "beta_end": 0.02,
                    "num_train_timesteps": 500},
                   {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
                   {"beta_schedule": "squaredcos_cap_v2"},
                   {"trained_betas": [0.1, 0.2, 0.3, 0.4], "num_train_timesteps": 4}):
        schedule = DiscreteSchedule.from_diffusers_config(config)
        ts = [t for t in timesteps if t < schedule.num_train_timesteps] + ([3] if schedule.num_train_timesteps == 4 else [])
        alpha, sigma = schedule.alpha_sigma(np.asarray(ts))
        schedules.append({"config": config, "num_train_timesteps": schedule.num_train_timesteps,
                          "alphas_cumprod_head": floats(schedule.alphas_cumprod[:4]),
                          "alphas_cumprod_tail": floats(schedule.alphas_cumprod[-4:]),
                          "timesteps": ts, "alpha": floats(alpha), "sigma": floats(sigma)})

    trailing = {str(n): [int(t) for t in trailing_timesteps(n)] for n in list(range(1, 65)) + [100, 103]}
    trailing_500 = {str(n): [int(t) for t in trailing_timesteps(n, 500)] for n in (1, 3, 4, 7)}
    lcm = {str(n): [int(t) for t in lcm_timesteps(n)] for n in range(1, 51)}
    defaults = {name: {str(n): [int(t) for t in default_timesteps(name, n)] for n in (1, 2, 4, 8)}
                for name in ("ddim", "stochastic", "lcm")}
    boundary = [{"t": t, "c_skip": float(c[0]), "c_out": float(c[1])}
                for t in (0, 1, 19, 259, 499, 999) for c in [lcm_boundary_scalings(t)]]

    # Parameterisations: float32 inputs, float64 coefficients -> float64 results.
    rng = np.random.RandomState(3)
    z = rng.standard_normal(12).astype(np.float32)
    prediction = rng.standard_normal(12).astype(np.float32)
    conversions = []
    schedule = DiscreteSchedule.scaled_linear()
    for t in (999, 499, 0):
        alpha, sigma = schedule.alpha_sigma(t)
        for kind in ("epsilon", "v_prediction", "sample"):
            x0 = to_x0(prediction, z, alpha, sigma, kind)
            x0_64 = np.asarray(x0, dtype=np.float64)
            conversions.append({"t": t, "kind": kind, "x0": floats(x0),
                                "eps": floats(to_eps(x0_64, z.astype(np.float64), alpha, sigma)),
                                "back": floats(from_x0(x0_64, z.astype(np.float64), alpha, sigma, kind))})
    write_json(out / "schedule.json", {
        "schedules": schedules, "trailing": trailing, "trailing_500": trailing_500, "lcm": lcm,
        "default_timesteps": defaults, "lcm_boundary": boundary,
        "conversions": {"z": floats(z), "prediction": floats(prediction), "cases": conversions}})


# -- recorded models ---------------------------------------------------------------------------

class RecordingBackend:
    """Scripted text encoder / UNet / decoder whose every call is recorded.

    The "network" is an arbitrary fixed function (tanh of the latents, the timestep, the text
    states and w); the Swift tests never re-implement it: they replay the recorded outputs.
    """

    name = "fixture"

    def __init__(self, hidden_size: int = 4, image_factor: int = 2):
        self.hidden_size = hidden_size
        self.image_factor = image_factor
        self.encode_calls, self.predict_calls, self.decode_calls = [], [], []

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        positions = np.arange(ids.shape[1], dtype=np.float64)[None, :, None]
        channels = np.arange(self.hidden_size, dtype=np.float64)[None, None, :]
        hidden = np.sin(0.01 * ids[:, :, None] * (channels + 1) + 0.1 * positions).astype(np.float32)
        self.encode_calls.append({"ids": [int(i) for i in ids.reshape(-1)], "hidden_shape": list(hidden.shape),
                                  "hidden": floats(hidden)})
        return hidden

    def predict(self, sample, timestep, hidden, w=None) -> np.ndarray:
        sample = np.asarray(sample, np.float32)
        text = np.asarray(hidden, np.float64).mean(axis=tuple(range(1, hidden.ndim))).reshape(-1, 1, 1, 1)
        out = np.tanh(0.7 * sample + 0.001 * timestep + 0.5 * text)
        if w is not None:
            out = out + 0.01 * np.asarray(w, np.float64).reshape(-1, 1, 1, 1)
        out = out.astype(np.float32)
        self.predict_calls.append({
            "t": int(timestep), "sample_shape": list(sample.shape), "sample": floats(sample),
            "w": None if w is None else floats(w),
            "hidden_shape": list(np.shape(hidden)),
            "hidden_row_sums": floats(np.asarray(hidden, np.float64).sum(axis=tuple(range(1, hidden.ndim)))),
            "output": floats(out)})
        return out

    def decode(self, latents, decoder: str = "full") -> np.ndarray:
        latents = np.asarray(latents, np.float32)
        up = latents.repeat(self.image_factor, axis=2).repeat(self.image_factor, axis=3)
        image = np.tanh(up[:, :3] * 0.8 + 0.1 * up[:, 3:4]).astype(np.float32)
        self.decode_calls.append({"latents": floats(latents), "latents_shape": list(latents.shape),
                                  "image_shape": list(image.shape), "image": floats(image)})
        return image


def tiny_bundle(card: ModelCard, tokenizer_dir: Path, latent: int = 4) -> Bundle:
    files = {name: (tokenizer_dir / name).read_text(encoding="utf-8") for name in ("vocab.json", "merges.txt")}
    configs = {"unet": {"in_channels": 4, "sample_size": latent, "block_out_channels": [32, 64]},
               "vae": {"block_out_channels": [32, 64], "scaling_factor": 0.18215},
               "text_encoder": {}, "scheduler": DiscreteSchedule.scaled_linear().to_config()}
    return Bundle(source="fixture", configs=configs, card=card, tokenizer_files=files)


def make_card(kind: str, prediction_type: str, steps=None, default_w=3.0, sampler="ddim") -> ModelCard:
    student = kind != "teacher"
    return ModelCard(kind=kind, prediction_type=prediction_type, steps=steps, w_min=0.0, w_max=8.0,
                     default_w=default_w, guidance_embedding_dim=256 if student else None,
                     recommended_sampler=sampler, recommended_steps=steps or 4).validate()


def sampler_fixtures(out: Path, tokenizer_dir: Path) -> None:
    cases = []

    def run(sampler, steps, prediction, kind="progressive", w=3.0, seed=0, images=1, uncond=True):
        backend = RecordingBackend()
        card = make_card(kind, prediction, steps if kind != "teacher" else None)
        pipeline = Pipeline(tiny_bundle(card, tokenizer_dir), backend)
        cond = np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 2, 3)
        negative = (np.linspace(1, -0.5, 6, dtype=np.float32).reshape(1, 2, 3)
                    if kind == "teacher" and uncond else None)
        timesteps = default_timesteps(sampler, steps)
        z, sources = batch_noise(seed, images, (4, 4, 4))
        repeat = lambda h: np.repeat(h, images, axis=0)  # noqa: E731
        denoise = pipeline.denoiser(repeat(cond), repeat(negative) if negative is not None else None, w, Timings())
        x = pipeline.sample(denoise, z, sampler, timesteps, sources)
        cases.append({"name": f"{sampler}-{steps}-{prediction}-{kind}-w{w}-n{images}",
                      "sampler": sampler, "steps": steps, "prediction_type": prediction, "kind": kind,
                      "w": w, "seed": seed, "image_count": images, "latent_shape": [4, 4, 4],
                      "timesteps": [int(t) for t in timesteps],
                      "cond_shape": list(cond.shape), "cond": floats(cond),
                      "uncond": None if negative is None else floats(negative),
                      "initial": floats(z), "calls": backend.predict_calls, "final": floats(x)})

    seed = 100
    for sampler in ("ddim", "stochastic", "lcm"):
        for steps in (1, 2, 4, 8):
            for prediction in ("epsilon", "v_prediction"):
                run(sampler, steps, prediction, kind="lcm" if sampler == "lcm" else "progressive", seed=seed)
                seed += 1
    run("lcm", 4, "v_prediction", kind="guidance-distilled", seed=seed)          # no boundary condition
    run("stochastic", 4, "v_prediction", images=2, seed=2**32 - 2)                # two noise streams
    run("ddim", 4, "sample", kind="guidance-distilled", w=0.0, seed=5)
    run("stochastic", 3, "epsilon", kind="guidance-distilled", w=8.0, seed=6)     # 3 steps: k = CLEAN early
    run("ddim", 2, "epsilon", kind="teacher", w=2.0, seed=7)                     # CFG, batch-2 calls
    run("stochastic", 4, "v_prediction", kind="teacher", w=4.5, seed=8, images=2)
    run("ddim", 2, "epsilon", kind="teacher", w=0.0, seed=9)                     # w = 0: conditional only
    write_json(out / "samplers.json", {"cases": cases})


def contract_for(card: ModelCard, *, height: int, width: int, latent: tuple, hidden: int, max_length: int = 77,
                 unet_batch: int = 1, chunks: bool = False, tiny_decoder: bool = False) -> dict:
    """A contract in the export format (``ane_diffusion_coreml.json``)."""
    c, h, w = latent
    student = card.is_student
    unet_inputs = [
        {"name": "sample", "shape": [unet_batch, c, h, w], "dtype": "float16"},
        {"name": "timestep", "shape": [unet_batch], "dtype": "float16"},
        {"name": "encoder_hidden_states", "shape": [unet_batch, hidden, 1, max_length], "dtype": "float16"},
    ]
    if student:
        unet_inputs.append({"name": "guidance_weight", "shape": [unet_batch], "dtype": "float32",
                            "description": "the paper's w (guidance_scale = 1 + w), embedded inside the model"})
    unet = {"file": "Unet.mlpackage", "inputs": unet_inputs,
            "outputs": [{"name": "noise_pred", "shape": [unet_batch, c, h, w], "dtype": "float16"}]}
    if chunks:
        unet["chunks"] = ["UnetChunk1.mlpackage", "UnetChunk2.mlpackage"]
    contract = {
        "format_version": 1,
        "model": card.to_dict(),
        "w_convention": "paper: guidance_scale = 1 + w",
        "image": {"height": height, "width": width},
        "latent": {"channels": c, "height": h, "width": w, "scaling_factor": 0.18215},
        "schedule": DiscreteSchedule.scaled_linear().to_config(),
        "tokenizer": {"vocab": "vocab.json", "merges": "merges.txt", "max_length": max_length},
        "components": {
            "TextEncoder": {"file": "TextEncoder.mlpackage",
                            "inputs": [{"name": "input_ids", "shape": [1, max_length], "dtype": "int32",
                                        "description": "CLIP token ids, start/end/padding included"}],
                            "outputs": [{"name": "last_hidden_state", "shape": [1, max_length, hidden],
                                         "dtype": "float16"},
                                        {"name": "pooled_outputs", "shape": [1, hidden], "dtype": "float16"}]},
            "Unet": unet,
            "VAEDecoder": {"file": "VAEDecoder.mlpackage",
                           "inputs": [{"name": "z", "shape": [1, c, h, w], "dtype": "float16"}],
                           "outputs": [{"name": "image", "shape": [1, 3, height, width], "dtype": "float16"}]},
            "VAEEncoder": {"file": "VAEEncoder.mlpackage",
                           "inputs": [{"name": "x", "shape": [1, 3, height, width], "dtype": "float16"}],
                           "outputs": [{"name": "latent", "shape": [1, 2 * c, h, w], "dtype": "float16"}]},
        },
    }
    if tiny_decoder:
        components = contract["components"]
        components["VAEDecoderFull"] = dict(components["VAEDecoder"], file="VAEDecoderFull.mlpackage", variant="full")
        components["VAEDecoder"]["variant"] = "tiny"
        components["VAEEncoder"]["variant"] = "tiny"
        contract["decoders"] = {"full": "VAEDecoderFull", "tiny": "VAEDecoder"}
        contract["encoders"] = {"tiny": "VAEEncoder"}
    return contract


def pipeline_fixtures(out: Path, tokenizer_dir: Path) -> None:
    cases = []

    def run(name, card, prompts, settings):
        backend = RecordingBackend()
        pipeline = Pipeline(tiny_bundle(card, tokenizer_dir), backend)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = pipeline.text_to_image(prompts, settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resolved = pipeline.resolve(prompts, settings)
        settings_dict = {"steps": settings.steps, "w": settings.w, "sampler": settings.sampler,
                         "seed": settings.seed, "image_count": settings.num_images,
                         "negative_prompt": settings.negative_prompt, "clamp": settings.clamp}
        contract = contract_for(card, height=8, width=8, latent=(4, 4, 4), hidden=backend.hidden_size,
                                unet_batch=1 if card.is_student else 2)
        cases.append({
            "name": name, "contract": contract, "prompts": prompts, "settings": settings_dict,
            "resolved": {"steps": resolved.steps, "w": resolved.w, "sampler": resolved.sampler,
                         "negative_prompt": resolved.negative_prompt},
            "warnings": [str(w.message) for w in caught],
            "encode_calls": backend.encode_calls, "predict_calls": backend.predict_calls,
            "decode_calls": backend.decode_calls,
            "images": [{"width": image.width, "height": image.height, "rgb": list(image.tobytes())}
                       for image in result.images],
            "metadata": [{k: m[k] for k in ("prompt", "negative_prompt", "seed", "steps", "w", "guidance_scale",
                                             "sampler", "height", "width", "model_kind", "clamp", "generator")}
                         for m in result.metadata],
        })

    run("student-defaults", make_card("progressive", "v_prediction", steps=4, default_w=3.0),
        ["a red circle at the top left"], Settings(seed=42, num_images=2))
    run("teacher-guided", make_card("teacher", "epsilon", sampler="ddim"),
        ["a photo of a cat"], Settings(sampler="stochastic", steps=3, w=2.5, seed=7, negative_prompt="blurry"))
    run("lcm-two-prompts", make_card("lcm", "epsilon", steps=None, default_w=1.5, sampler="lcm"),
        ["an astronaut riding a horse", "a blue car"], Settings(steps=4, seed=2**32 - 2, num_images=2))
    run("student-negative-ignored", make_card("guidance-distilled", "epsilon", steps=2, default_w=2.0),
        ["a dog"], Settings(seed=3, steps=1, negative_prompt="ugly", sampler="stochastic"))
    # Bounds the scripted UNet's estimates cross in every channel, so the clamp changes the trajectory.
    narrow = {"low": [-0.6, -0.45, -0.5, -0.3], "high": [0.5, 0.4, 0.55, 0.35], "percentiles": [0.05, 99.95],
              "examples": 16}
    clamped = dataclasses.replace(make_card("progressive", "epsilon", steps=4, default_w=6.0), latent_range=narrow)
    run("student-clamped", clamped.validate(), ["a red circle at the top left"],
        Settings(seed=11, num_images=2, clamp=True))
    run("student-range-unused", clamped.validate(), ["a red circle at the top left"], Settings(seed=11, num_images=2))
    run("teacher-clamped-stochastic",
        dataclasses.replace(make_card("teacher", "v_prediction"), latent_range=narrow).validate(),
        ["a photo of a cat"], Settings(sampler="stochastic", steps=2, w=4.0, seed=5, clamp=True))
    write_json(out / "pipeline.json", {"cases": cases})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixture folder (default: %(default)s)")
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_fixtures(out)
    noise_fixtures(out)
    guidance_fixtures(out)
    schedule_fixtures(out)
    sampler_fixtures(out, out / "tokenizer")
    pipeline_fixtures(out, out / "tokenizer")
    card = make_card("progressive", "v_prediction", steps=4, default_w=3.0)
    write_json(out / "contract_example.json",
               contract_for(card, height=512, width=512, latent=(4, 64, 64), hidden=768, chunks=True))
    write_json(out / "contract_tiny_decoder.json",
               contract_for(card, height=512, width=512, latent=(4, 64, 64), hidden=768, chunks=True,
                            tiny_decoder=True))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(list(out.rglob('*.json'))) + 1} files to {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
