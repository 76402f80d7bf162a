"""The quality harness with every x estimate clamped to the data latents' range (issue 11, section 9
of README.md here): a diagnostic for the epsilon students' colour burn at high w. Superseded by the
runtime option (``generate --clamp``, ``benchmarks/quality.py --clamp``, bounds from each model's card;
section 10); kept to reproduce section 9's runs.

Run from the repository root:
    python benchmarks/results/issue11/clamp_quality.py --latents CACHE.safetensors QUALITY_ARGS ...

CACHE.safetensors: a distillation cache (``WORK/cache/images-*.safetensors`` of ``stage1_w_trial.py``),
whose ``latents`` (N, 4, h, w) give the range (:meth:`ane_diffusion.latent_range.LatentRange.from_latents`:
per channel, the 0.05th to 99.95th percentile; the trial caches hold 4000 latents, all of them read;
section 9's runs took the percentiles in float32, within 1e-5 of these). Every
denoising step's x estimate (teacher and students alike) is clipped to it before the sampler uses it;
the remaining arguments go to ``benchmarks/quality.py`` unchanged."""
import argparse
import runpy
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from safetensors import safe_open  # noqa: E402

from ane_diffusion.latent_range import LatentRange  # noqa: E402
from ane_diffusion.pipeline import Pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    parser.add_argument("--latents", required=True)
    args, rest = parser.parse_known_args()
    bounds = LatentRange.from_latents(safe_open(args.latents, "np").get_tensor("latents"))
    print(f"clamping x estimates to {np.round(bounds.low, 2)} .. {np.round(bounds.high, 2)} per channel")
    unclamped = Pipeline.denoiser

    def clamped(self, *a, **k):
        denoise = unclamped(self, *a, **k)
        return lambda z, t: bounds.clamp(denoise(z, t))

    Pipeline.denoiser = clamped
    sys.argv = [str(ROOT / "benchmarks" / "quality.py")] + rest
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
