"""PROJECTION, not measurement: a guidance-distilled student's latency on Apple devices.

Method. Apple published measured latencies of the *guided* baseline (classifier-free guidance,
UNet batch 2) on several devices. The student does the same kind of work (same networks, same
resolution, one batch-1 UNet call per step instead of a batch-2 call, 1-4 steps instead of 20-50,
one text-encoder call instead of two). Assuming each device delivers the same FLOPs per second on
the student as it did on the baseline, the student's latency is::

    projected = published_baseline_latency x student_FLOPs / baseline_FLOPs

with FLOPs of the whole image (text encoder, every UNet call, VAE decode) counted by torch's FLOP
counter on the baseline's own architecture (SD 1.4 = SD 1.5's architecture; SD 2.1-base). Beside
it, the physical floor ``student_FLOPs / peak Neural Engine throughput`` shows how far that is
from the chip's limit.

Why the assumption can fail (each makes the real student slower than projected): a batch-1 UNet
call uses the Neural Engine less fully than a batch-2 call; the VAE decoder (most of a 1-step
student's work) may run at a different rate than the UNet; fixed per-call costs weigh more in a
short run. Measure on the device (``--backend coreml``) before quoting a number.
"""

from __future__ import annotations

LABEL = "PROJECTION (estimated from Apple's published baselines; not measured)"

BASELINE_SOURCE = ("apple/ml-stable-diffusion README (Apple's measured end-to-end latencies, 512x512, "
                   "classifier-free guidance), as collected in the project's reference notes "
                   "(coreml-ane.md)")

APPLE_BASELINES = (
    # SD 2.1-base, 20 steps, 6-bit palettized, CPU_AND_NE, split-einsum v2.
    dict(device="iPhone 14 Pro Max", chip="A16 Bionic", model="sd21-base", model_label="SD 2.1-base", steps=20,
         precision="6-bit", compute_units="CPU_AND_NE", latency_s=7.9),
    dict(device="iPad Pro", chip="M2", model="sd21-base", model_label="SD 2.1-base", steps=20,
         precision="6-bit", compute_units="CPU_AND_NE", latency_s=7.0),
    dict(device="iPhone 13 Pro Max", chip="A15 Bionic", model="sd21-base", model_label="SD 2.1-base", steps=20,
         precision="6-bit", compute_units="CPU_AND_NE", latency_s=10.4),
    dict(device="iPhone 12 Pro Max", chip="A14 Bionic", model="sd21-base", model_label="SD 2.1-base", steps=20,
         precision="6-bit", compute_units="CPU_AND_NE", latency_s=15.4),
    # SD 1.4, 50 steps, float16 (Nov 2022). The reference notes do not record the compute units of
    # these runs: if a run used the GPU, the Neural Engine floor is not that run's limit.
    dict(device="Mac Studio", chip="M1 Ultra", model="sd15", model_label="SD 1.4", steps=50,
         precision="fp16", compute_units="compute units not recorded", latency_s=9.0),
    dict(device="MacBook Air", chip="M2", model="sd15", model_label="SD 1.4", steps=50,
         precision="fp16", compute_units="compute units not recorded", latency_s=23.0),
    dict(device="MacBook Pro", chip="M1", model="sd15", model_label="SD 1.4", steps=50,
         precision="fp16", compute_units="compute units not recorded", latency_s=35.0),
)

PEAK_NE_TOPS = {
    "A14 Bionic": 11.0,
    "A15 Bionic": 15.8,
    "A16 Bionic": 17.0,
    "M1": 11.0,
    "M2": 15.8,
    "M1 Ultra": 22.0,
}
"""Peak Neural Engine throughput, trillions of operations per second, as Apple announced each chip
(A14 Bionic and M1: 11; A15 Bionic: 15.8; A16 Bionic: 17; M2: 15.8; M1 Ultra's 32-core Neural
Engine: 22)."""

PEAK_CAVEAT = ("Peak TOPS are Apple's marketing figures (operations per second at the Neural Engine's "
               "best precision; Apple does not say int8 or fp16 for these chips). Sustained fp16 throughput on "
               "real networks is lower, so the floor is a bound no implementation reaches, not a target.")

ASSUMPTIONS = (
    "Same FLOPs per second on the student as on the published baseline, on each device and for every "
    "component (text encoder, UNet, VAE decoder).",
    "Student = the baseline's model with a guidance input (time_cond_proj_dim 256), same 512x512 "
    "resolution, same precision and compute units as the published run; it needs one text-encoder call and "
    "one batch-1 UNet call per step; the baseline needs two text-encoder calls and one batch-2 UNet call "
    "per step.",
    "Work = FLOPs of convolutions, matmuls and attention counted by torch.utils.flop_counter (2 per "
    "multiply-add); normalisations, activations and resampling are not counted.",
    "SD 1.4 rows use SD 1.5's architecture (identical); SD 2.1-base rows use SD 2.1-base's.",
    "Published latencies are taken as per-image generation time; model load and compilation are not "
    "included on either side.",
)


TINY_ASSUMPTION = (
    "Tiny-decoder rows (student + tiny decoder): the decoder is diffusers' AutoencoderTiny in TAESD's shape "
    "(64 channels, 3 upsamplings) and is assumed to run at the same FLOPs per second as the rest. It is a thin, "
    "memory-bound network at 512x512 (64-channel feature maps of 256x256 and 512x512 pixels), so the Neural "
    "Engine may run it below that rate: the tiny-decoder rows are the most optimistic ones.")


def project(student_steps=(1, 2, 4), baselines=APPLE_BASELINES, work=None, decoders=("full",)) -> dict:
    """The projection table. ``work(model) -> (teacher WorkCounter, student WorkCounter)``.

    ``decoders``: the student's VAE decoder(s); each row has ``student`` (the full decoder) and,
    with ``tiny``, ``student_tiny`` (the same student decoding with the tiny decoder, TAESD's shape
    for the baseline's VAE). The baseline always decodes with its full VAE, as Apple's runs did."""
    from .flops import guided_evaluations, reference_work, student_evaluations

    work = work or reference_work
    rows = []
    for base in baselines:
        teacher, student = work(base["model"])
        baseline_flops = teacher.image_flops(guided_evaluations(base["steps"]))
        peak = PEAK_NE_TOPS.get(base["chip"])
        effective = baseline_flops / base["latency_s"] / 1e12
        row = dict(base, baseline_flops=baseline_flops, baseline_effective_tflops=effective,
                   peak_ne_tops=peak, baseline_fraction_of_peak=(effective / peak) if peak else None,
                   student={})
        for decoder in decoders:
            key = "student" if decoder == "full" else f"student_{decoder}"
            row[key] = {}
            for steps in student_steps:
                flops = student.image_flops(student_evaluations(steps, decoder))
                projected = base["latency_s"] * flops / baseline_flops
                floor = flops / (peak * 1e12) if peak else None
                row[key][str(steps)] = dict(
                    flops=flops, work_ratio=baseline_flops / flops, projected_s=projected,
                    floor_s=floor, projected_over_floor=(projected / floor) if floor else None)
        rows.append(row)
    return {"label": LABEL, "method": "projected = published_baseline_latency x student_FLOPs / baseline_FLOPs; "
                                      "floor = student_FLOPs / peak Neural Engine throughput",
            "basis": "FLOPs of each published baseline's own model at 512x512 (SD 1.5 for SD 1.4, SD 2.1-base), "
                     "counted on the meta device; independent of this run's architecture and timings",
            "assumptions": list(ASSUMPTIONS) + ([TINY_ASSUMPTION] if "tiny" in decoders else []),
            "baseline_source": BASELINE_SOURCE, "peak_caveat": PEAK_CAVEAT,
            "peak_ne_tops": dict(PEAK_NE_TOPS), "rows": rows}
