"""LoRA students: a stage-1 LoRA run learns, its adapter loads through diffusers' own LoRA loader,
base + adapter equals the fused bundle, ``generate --student-lora`` runs it, and the precision
checks refuse what a device cannot run. Devices other than the CPU are tested where present."""

import json

import numpy as np
import pytest
import torch

from ane_diffusion.bundle import resolve_bundle
from ane_diffusion.distill import DistillConfig, distill_guidance, distill_progressive
from ane_diffusion.distill.precision import PrecisionError, check_precision
from ane_diffusion.distill.stage1 import ADAPTER_FILE
from ane_diffusion.student import add_guidance_input
from ane_diffusion.student_lora import BaseView, add_lora, apply_adapter, guidance_base, read_adapter
from ane_diffusion.testing import make_tiny_bundle
from ane_diffusion.testing.shards import write_shards
from ane_diffusion.torch_models import load_components

DIM = 32


def config(root, teacher, output, **extra):
    settings = dict(model=str(teacher), output=str(output), shards=str(root / "shards"), updates=40, batch_size=4,
                    lr=2e-3, w_min=0.0, w_max=4.0, guidance_embedding_dim=DIM, lora_rank=4, progress=False,
                    checkpoint_every=1000, cache_dir=str(root / "cache"), log_every=10)
    return DistillConfig(**(settings | extra))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    write_shards(root / "shards", 2, 8)
    teacher = make_tiny_bundle(root / "teacher", prediction_type="v_prediction")
    student = distill_guidance(config(root, teacher, root / "run"))
    return root, teacher, student


def inputs(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, 8, 8, generator=gen), torch.tensor([20, 300, 600, 950][:n]),
            torch.randn(n, 77, 32, generator=gen), torch.rand(n, generator=gen) * 4)


def outputs(unet, z, t, hidden, w):
    from ane_diffusion.guidance import torch_guidance_embedding

    with torch.no_grad():
        return unet(z, t, encoder_hidden_states=hidden, timestep_cond=torch_guidance_embedding(w, DIM)).sample


def test_lora_run_lowers_the_loss_and_trains_only_adapters_and_guidance(run):
    root, teacher, student = run
    log = [json.loads(line)["loss"] for line in (root / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and log[-1] < 0.8 * log[0], log
    card = resolve_bundle(student).card
    assert card.training["settings"]["lora_rank"] == 4 and card.kind == "guidance-distilled"
    base = load_components(resolve_bundle(teacher)).unet.state_dict()
    fused = load_components(resolve_bundle(student)).unet.state_dict()
    changed = {k for k in base if not torch.equal(base[k], fused[k])}
    assert changed and all(any(p in k for p in ("to_q", "to_k", "to_v", "to_out.0")) for k in changed)
    assert fused["time_embedding.cond_proj.weight"].abs().sum() > 0  # the guidance projection trained


def test_adapter_plus_base_equals_the_fused_bundle(run):
    root, teacher, student = run
    base = load_components(resolve_bundle(teacher)).unet
    fused = load_components(resolve_bundle(student)).unet
    ours, card = apply_adapter(base, root / "run" / ADAPTER_FILE)
    assert card.guidance_embedding_dim == DIM and card.w_max == 4.0
    z, t, hidden, w = inputs()
    reference = outputs(fused, z, t, hidden, w)
    torch.testing.assert_close(outputs(ours, z, t, hidden, w), reference, rtol=1e-5, atol=1e-5)
    # diffusers' own loader reads the file (adapters unfused, on the base with a guidance input)
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader

    state, alphas, metadata = Loader.lora_state_dict(str(root / "run" / ADAPTER_FILE), return_lora_metadata=True)
    unfused = add_guidance_input(base, DIM)
    Loader.load_lora_into_unet(state, alphas, unfused, adapter_name="student", metadata=metadata)
    torch.testing.assert_close(outputs(unfused, z, t, hidden, w), reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outputs(add_guidance_input(base, DIM), z, t, hidden, w), reference, atol=1e-3)


def test_generate_with_student_lora_matches_the_fused_student(run, tmp_path):
    from ane_diffusion.api import generate

    root, teacher, student = run
    a = generate("a red circle", model=str(teacher), student_lora=str(root / "run" / ADAPTER_FILE), steps=2, w=2.0)
    b = generate("a red circle", model=str(student), steps=2, w=2.0)
    diff = np.abs(np.asarray(a.images[0], dtype=int) - np.asarray(b.images[0], dtype=int))
    assert diff.max() <= 1

def test_generate_refuses_a_bad_adapter_in_one_line(run, tmp_path, capsys):
    from ane_diffusion.cli import main

    root, teacher, _ = run
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    assert main(["generate", "x", "--model", str(teacher), "--student-lora", str(bad),
                 "-o", str(tmp_path / "x.png"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.safetensors" in err[0] and "not a readable safetensors file" in err[0]
    assert not (tmp_path / "x.png").exists()


def test_lora_stage2_phase_writes_adapter_on_the_stage1_student(run):
    root, teacher, student = run
    phases = distill_progressive(DistillConfig(model=str(student), output=str(root / "run2"),
                                               shards=str(root / "shards"), start_steps=4, target_steps=2,
                                               updates=3, batch_size=2, lr=1e-3, lora_rank=2, progress=False,
                                               cache_dir=str(root / "cache")))
    adapter = root / "run2" / "steps-2-lora.safetensors"
    _, _, card = read_adapter(adapter)
    assert card.steps == 2 and card.kind == "progressive"
    ours, _ = apply_adapter(load_components(resolve_bundle(student)).unet, adapter)
    z, t, hidden, w = inputs()
    torch.testing.assert_close(outputs(ours, z, t, hidden, w),
                               outputs(load_components(resolve_bundle(phases[0])).unet, z, t, hidden, w),
                               rtol=1e-5, atol=1e-5)


def test_base_view_is_the_teacher_and_checkpointing_keeps_gradients(tiny_teacher):
    teacher = load_components(resolve_bundle(tiny_teacher)).unet
    reference = add_guidance_input(teacher, DIM)
    student = add_lora(guidance_base(load_components(resolve_bundle(tiny_teacher)).unet, DIM), 4)
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    z, t, hidden, w = inputs()
    with torch.no_grad():
        plain = teacher(z, t, encoder_hidden_states=hidden).sample
        torch.testing.assert_close(BaseView(student)(z, t, encoder_hidden_states=hidden).sample, plain)
    assert not torch.allclose(outputs(student, z, t, hidden, w), outputs(reference, z, t, hidden, w), atol=1e-3)
    grads = []
    for checkpointing in (False, True):
        student.train()
        if checkpointing:
            student.enable_gradient_checkpointing()
        student.zero_grad()
        from ane_diffusion.guidance import torch_guidance_embedding

        out = student(z, t, encoder_hidden_states=hidden, timestep_cond=torch_guidance_embedding(w, DIM)).sample
        out.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])


def test_precision_checks_per_device():
    check_precision("no", torch.device("cpu"))
    check_precision("bf16", torch.device("cpu"))
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA or MPS device"):
        check_precision("fp16", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="CPU-only check")
def test_fp16_on_cpu_is_refused_before_anything_is_written(run, tmp_path, capsys, fresh_accelerate):
    from ane_diffusion.cli import main

    root, teacher, _ = run
    out = tmp_path / "out"
    assert main(["distill", "guidance", "--teacher", str(teacher), "--shards", str(root / "shards"),
                 "--output", str(out), "--mixed-precision", "fp16", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --mixed-precision fp16 needs a CUDA or MPS device; on the CPU use bf16 or no"]
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.fixture
def fresh_accelerate():
    """accelerate keeps one process-wide state; a test that changes the precision resets it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def accelerators():
    found = []
    if torch.cuda.is_available():
        found += [("cuda", "fp16")] + ([("cuda", "bf16")] if torch.cuda.is_bf16_supported() else [])
    if torch.backends.mps.is_available():
        found += [("mps", "fp16"), ("mps", "bf16")]
    return found or [pytest.param(None, None, marks=pytest.mark.skip(reason="no CUDA or MPS device here"))]


@pytest.mark.parametrize(("device", "precision"), accelerators())
def test_mixed_precision_lora_run_on_an_accelerator(run, tmp_path, device, precision, fresh_accelerate):
    """Runs where CUDA or MPS exists: float32 master weights, finite losses, a loadable student."""
    try:
        check_precision(precision, torch.device(device))
    except PrecisionError as exc:
        pytest.skip(str(exc))
    root, teacher, _ = run
    student = distill_guidance(config(root, teacher, tmp_path / "run", updates=4, mixed_precision=precision))
    card = resolve_bundle(student).card
    assert card.training["device"] == device and card.training["mixed_precision"] == precision
    assert np.isfinite(card.training["final_loss"])
    assert all(v.dtype == torch.float32 for v in load_components(resolve_bundle(student)).unet.state_dict().values())


def test_bf16_lora_run_on_the_cpu(run, tmp_path, fresh_accelerate):
    root, teacher, _ = run
    student = distill_guidance(config(root, teacher, tmp_path / "run", updates=3, mixed_precision="bf16",
                                      gradient_checkpointing=True))
    card = resolve_bundle(student).card
    assert card.training["mixed_precision"] == "bf16" and np.isfinite(card.training["final_loss"])
