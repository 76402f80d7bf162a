"""The latency benchmark (``python -m ane_diffusion bench``): the quick run end to end, its work
counts, its labelled projection, and one-line errors for bad requests."""

import importlib
import json
import subprocess
import sys

import pytest

import ane_diffusion.benchmarking as bench_lib


def run_cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "ane_diffusion", "bench", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = run_cli("--quick", "--output-dir", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "latency-demo.json").read_text())
    return out, proc, report


def test_quick_writes_json_markdown_and_png(quick):
    out, proc, report = quick
    assert sorted(p.name for p in out.iterdir()) == ["latency-demo.json", "latency-demo.md", "latency-demo.png"]
    assert (out / "latency-demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for ext in ("json", "md", "png"):
        assert str(out / f"latency-demo.{ext}") in proc.stdout
    assert report["arch"] == "demo" and report["settings"]["quick"] is True
    assert {"cpu", "cores", "ram_gib"} <= set(report["machine"])
    assert {"python", "torch", "diffusers", "coremltools"} <= set(report["versions"])
    assert report["date"] and report["backend"]["name"] == "torch"
    md = (out / "latency-demo.md").read_text()
    assert "## Whole image" in md and "## Speed-up" in md and "| 20 steps |" in md


def test_components_are_timed_and_counted(quick):
    _, _, report = quick
    comps = report["components"]
    assert {name: c["batch"] for name, c in comps.items()} == {
        "text_encoder": 1, "unet_teacher": 2, "unet_student": 1, "vae_decode": 1, "vae_decode_tiny": 1}
    # the tiny decoder (diffusers AutoencoderTiny sized for the demo VAE) does a fraction of the work
    # the demo VAE's tiny decoder is half its widest level (32 channels): 2.3x fewer FLOPs
    assert comps["vae_decode_tiny"]["flops"] < comps["vae_decode"]["flops"] / 2
    for c in comps.values():
        assert c["median_s"] > 0 and c["flops"] > 0 and len(c["times_s"]) == report["settings"]["repeats"]
    # batch 2 is twice the work of batch 1 (up to the student's tiny guidance projection)
    assert comps["unet_teacher"]["flops"] == pytest.approx(2 * comps["unet_student"]["flops"], rel=1e-3)


def test_whole_images_use_the_pipeline_evaluations(quick):
    _, _, report = quick
    images = {(e["role"], e["steps"], e["decoder"]): e for e in report["images"]}
    # the baseline with the tiny decoder at its smallest step count: the two wins stay separable
    assert set(images) == {("baseline", 20, "full"), ("baseline", 50, "full"), ("baseline", 20, "tiny")} | {
        ("student", n, d) for n in (1, 2, 4) for d in ("full", "tiny")}
    for (role, steps, decoder), e in images.items():
        calls = {(ev["component"], ev["batch"]): ev["calls"] for ev in e["evaluations"]}
        decode = "vae_decode" if decoder == "full" else "vae_decode_tiny"
        if role == "baseline":
            assert calls == {("text_encoder", 1): 2, ("unet", 2): steps, (decode, 1): 1}
            assert e["sampler"] == "dpmpp-2m"
        else:
            assert calls == {("text_encoder", 1): 1, ("unet", 1): steps, (decode, 1): 1}
        assert e["unet_calls"] == steps and e["total"]["median_s"] > 0 and e["flops"] > 0
    for steps in ("1", "2", "4", "1 tiny", "2 tiny", "4 tiny"):
        assert 0 < report["vae_share"][steps]["time"] < 1 and 0 < report["vae_share"][steps]["flops"] < 1
        if "tiny" in steps:
            assert report["vae_share"][steps]["flops"] < report["vae_share"][steps.split()[0]]["flops"]


def test_ratios_exceed_one_and_flops_follow_the_evaluation_count(quick):
    _, _, report = quick
    c = {name: comp["flops"] for name, comp in report["components"].items()}
    assert len(report["ratios"]) == 18  # (20, 50, 20 tiny) x (1, 2, 4) x (full, tiny)
    decode = {"full": c["vae_decode"], "tiny": c["vae_decode_tiny"]}
    for r in report["ratios"]:
        n_base, n_student = r["baseline_steps"], r["student_steps"]
        assert r["latency_ratio"] > 1, r
        baseline = 2 * c["text_encoder"] + n_base * c["unet_teacher"] + decode[r["baseline_decoder"]]
        student = c["text_encoder"] + n_student * c["unet_student"] + decode[r["student_decoder"]]
        assert r["flops_ratio"] == pytest.approx(baseline / student, rel=1e-12)
        # the UNet alone: 2 x n_base sample evaluations against n_student; the text encoder and the
        # VAE decode (the same on both sides) pull the whole-image ratio towards 1
        assert r["unet_sample_evaluations_ratio"] == 2 * n_base / n_student
        assert 1 < r["flops_ratio"] < r["unet_sample_evaluations_ratio"]


def test_projection_is_labelled_and_consistent(quick):
    out, _, report = quick
    p = report["projection"]
    assert "PROJECTION" in p["label"] and "not measured" in p["label"]
    assert p["assumptions"] and "peak" in p["peak_caveat"].lower()
    md = (out / "latency-demo.md").read_text()
    assert f"## {p['label']}" in md
    devices = {row["device"]: row for row in p["rows"]}
    assert devices["iPhone 14 Pro Max"]["latency_s"] == 7.9 and devices["iPhone 14 Pro Max"]["steps"] == 20
    assert devices["MacBook Pro"]["latency_s"] == 35.0 and devices["MacBook Pro"]["steps"] == 50
    for row in p["rows"]:
        previous = 0.0
        for steps in ("1", "2", "4"):
            st = row["student"][steps]
            assert st["projected_s"] == pytest.approx(row["latency_s"] * st["flops"] / row["baseline_flops"])
            assert st["floor_s"] < st["projected_s"] < row["latency_s"]
            assert st["projected_s"] > previous  # more steps, more time
            previous = st["projected_s"]
            tiny = row["student_tiny"][steps]  # the same student decoding with TAESD's architecture
            assert tiny["flops"] < st["flops"] and tiny["projected_s"] < st["projected_s"]
    assert any("tiny" in a.lower() for a in p["assumptions"])


def test_meta_count_equals_a_real_cpu_count():
    """FLOPs are counted on the meta device; a real CPU call (attention as the CPU flash kernel)
    gives the same number, so the count is what the timed call does."""
    import numpy as np
    import torch
    from diffusers import UNet2DConditionModel

    lib = bench_lib
    flops = importlib.import_module(f"{lib.__name__}.flops")
    spec = importlib.import_module(f"{lib.__name__}.architectures").arch_spec("demo")
    configs = spec.student_configs
    work = flops.WorkCounter(configs, 32, 32)
    unet = UNet2DConditionModel.from_config(configs["unet"]).eval()
    z = torch.from_numpy(np.zeros((1, 4, 8, 8), np.float32))
    hidden = torch.zeros(1, 77, configs["text_encoder"]["hidden_size"])
    real = flops.count_flops(lambda: unet(z, torch.full((1,), 500), encoder_hidden_states=hidden,
                                          timestep_cond=torch.zeros(1, spec.guidance_dim)))
    assert real == work.flops("unet", 1) > 0


def test_sd15_configs_are_stable_diffusion_1_5():
    """Parameter counts of the published SD 1.5 components (built on the meta device: no memory)."""
    lib = bench_lib
    flops = importlib.import_module(f"{lib.__name__}.flops")
    teacher, student = flops.reference_work("sd15")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(teacher._module("unet")) == 859_520_964
    assert count(teacher._module("text_encoder")) == 123_060_480
    assert count(teacher._module("vae")) == 83_653_863
    assert count(student._module("unet")) == 859_520_964 + 256 * 320  # + the guidance projection (w embedding -> 320)
    assert teacher.latent_shape == (4, 64, 64)


@pytest.mark.parametrize("args, message", [
    (["--arch", "sd14"], "unknown architecture 'sd14'"),
    (["--student-steps", "0"], "--student-steps must be >= 1, got 0"),
    (["--baseline-steps", "20", "-5"], "--baseline-steps must be >= 1, got -5"),
    (["--quick", "--arch", "sd15"], "--quick benchmarks the demo architecture only"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--student-steps", "two"], "invalid int value"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = run_cli(*args, "--output-dir", tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS the Core ML path runs")
def test_coreml_is_skipped_off_macos_with_one_line(tmp_path):
    proc = run_cli("--backend", "coreml", "--model", tmp_path / "missing", "--output-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().count("\n") == 0 and "skipped" in proc.stdout and "macOS" in proc.stdout
    assert not list(tmp_path.iterdir())


def test_coreml_path_runs_against_the_backend_interface(monkeypatch, tiny_student, tiny_teacher, tmp_path):
    """The macOS path, with a stand-in for ``CoreMLBackend`` (the torch backend under another name):
    exports are loaded and timed once, first calls are reported, results are written."""
    import ane_diffusion.backends as backends
    from ane_diffusion.backends.torch_backend import TorchBackend

    lib = bench_lib
    coreml = importlib.import_module(f"{lib.__name__}.coreml")
    monkeypatch.setattr(coreml, "available", lambda: True)
    loaded = []

    class FakeCoreML(TorchBackend):
        name = "coreml"

        def runner(self, package):
            loaded.append(package)

    def fake_make_backend(name, bundle, **options):
        assert name == "coreml" and options == {"compute_units": "CPU_AND_NE"}
        loaded.append(bundle.card.kind)
        return FakeCoreML(bundle, device="cpu")

    monkeypatch.setattr(backends, "make_backend", fake_make_backend)
    report = lib.run(lib.BenchOptions(backend="coreml", model=str(tiny_student), teacher_model=str(tiny_teacher),
                                      baseline_steps=(8,), student_steps=(1, 2), warmup=1, repeats=1,
                                      output_dir=tmp_path, plot=False, threads=1), log=lambda message: None)
    packages = ["TextEncoder", "Unet", "VAEDecoder"]
    assert loaded == ["guidance-distilled", *packages, "teacher", *packages]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latency-demo-coreml.json", "latency-demo-coreml.md"]
    load = report["backend"]["model_load_s"]
    assert set(load) == {"student", "baseline"} and set(load["student"]) == {"backend", *packages, "total"}
    assert all(c["first_call_s"] > 0 for c in report["components"].values())
    assert [(r["baseline_steps"], r["student_steps"]) for r in report["ratios"]] == [(8, 1), (8, 2)]
    assert all(r["latency_ratio"] > 0 for r in report["ratios"])
    # the tiny test bundles are not the demo architecture: no FLOPs rather than wrong ones
    assert all(r["flops_ratio"] is None for r in report["ratios"])
    assert all(c["flops"] is None for c in report["components"].values())
    with pytest.raises(lib.BenchError, match="needs a guidance-distilled student"):
        lib.run(lib.BenchOptions(backend="coreml", model=str(tiny_teacher), output_dir=tmp_path), log=print)


def test_check_unet_times_one_student_call_and_writes_nothing(tmp_path):
    proc = run_cli("--arch", "demo", "--check-unet", "--warmup", "1", "--repeats", "1", "--output-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "demo student UNet call (batch 1, latents 4x8x8" in proc.stdout and "GFLOP/s" in proc.stdout
    assert not list(tmp_path.iterdir())


def test_bench_is_a_cli_subcommand():
    proc = subprocess.run([sys.executable, "-m", "ane_diffusion", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "bench" in proc.stdout


def test_export_configs_are_checked_against_the_architecture():
    """Core ML exports record part of their configs; FLOPs come from --arch only when they agree."""
    lib = bench_lib
    arch = importlib.import_module(f"{lib.__name__}.architectures")
    spec = arch.arch_spec("demo")
    partial = {"unet": {k: spec.student_configs["unet"][k] for k in ("in_channels", "block_out_channels")},
               "vae": {"block_out_channels": [0, 0, 0]}, "text_encoder": {"hidden_size": 64}}
    assert arch.config_mismatch(spec.student_configs, partial) is None
    partial["unet"]["block_out_channels"] = [32, 64]
    assert "unet.block_out_channels is [32, 64]" in arch.config_mismatch(spec.student_configs, partial)
