"""Convert tiny rewritten models to Core ML and run the saved packages through the numpy MIL executor.

Checks, without a Mac: fp32 package == PyTorch (max abs < 1e-4); fp16 package PSNR >= 35 dB vs
PyTorch fp32; a 6-bit k-means palettized package runs; the hand-written kernels (conv with groups /
strides / padding / dilation, conv_transpose, upsample, silu, gather_nd) match PyTorch.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ct = pytest.importorskip("coremltools")
pytest.importorskip("diffusers")

import ane_diffusion_conversion.mil_executor as mil
from ane_diffusion_conversion.ane import rewrite as rw
from ane_diffusion_conversion.mil_executor import MILExecutor
from torch import nn

from ane_diffusion.testing.factory import tiny_configs


def psnr(out: np.ndarray, ref: np.ndarray) -> float:
    """PSNR in dB with the reference's value range as the peak."""
    out, ref = out.astype(np.float64), ref.astype(np.float64)
    mse = np.mean((out - ref) ** 2)
    return float(10 * np.log10((ref.max() - ref.min()) ** 2 / max(mse, 1e-30)))


def convert(traced, inputs, outputs, precision, path, io_dtype=np.float32):
    model = ct.convert(
        traced,
        inputs=[ct.TensorType(name, shape=arr.shape, dtype=dtype or io_dtype) for name, arr, dtype in inputs],
        outputs=[ct.TensorType(name, dtype=io_dtype) for name in outputs],
        convert_to="mlprogram",
        compute_precision=precision,
        minimum_deployment_target=ct.target.iOS16,
    )
    model.save(str(path))
    return model


@pytest.fixture(scope="module")
def unet_packages(tmp_path_factory):
    """Rewritten tiny UNet traced once, converted to fp32 and fp16 packages (fp32 I/O, so fp16 has casts)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**tiny_configs()["unet"], time_cond_proj_dim=16).eval()
    wrapper = rw.UNetANEWrapper(rw.rewrite_unet(unet, "split_einsum")).eval()
    sample = torch.randn(1, 4, 8, 8)
    timestep = torch.tensor([500.0])
    ehs = torch.randn(1, 32, 1, 77)  # (B, C, 1, S)
    tcond = torch.randn(1, 16)
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (sample, timestep, ehs, tcond), check_trace=False)
    spec = [("sample", sample, None), ("timestep", timestep, None), ("encoder_hidden_states", ehs, None),
            ("timestep_cond", tcond, None)]
    root = tmp_path_factory.mktemp("unet")
    models = {}
    for precision in ("FLOAT32", "FLOAT16"):
        models[precision] = convert(
            traced, spec, ["noise_pred"], getattr(ct.precision, precision), root / f"unet_{precision}.mlpackage"
        )

    torch.manual_seed(1)  # fresh inputs, not the tracing ones
    feed = {
        "sample": torch.randn(1, 4, 8, 8),
        "timestep": torch.tensor([321.0]),
        "encoder_hidden_states": torch.randn(1, 32, 1, 77),
        "timestep_cond": torch.randn(1, 16),
    }
    with torch.no_grad():
        ref = wrapper(*feed.values()).numpy()
    return root, models, {k: v.numpy() for k, v in feed.items()}, ref


def test_unet_fp32_package_matches_pytorch(unet_packages):
    root, _, feed, ref = unet_packages
    ex = MILExecutor(root / "unet_FLOAT32.mlpackage")
    assert ex.input_names == ["sample", "timestep", "encoder_hidden_states", "timestep_cond"]
    assert ex.output_names == ["noise_pred"]
    assert ex.op_counts.get("einsum", 0) > 0  # split-einsum attention survived conversion as einsum ops
    out = ex.predict(feed)["noise_pred"]
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-4


def test_unet_fp16_package_psnr(unet_packages):
    root, _, feed, ref = unet_packages
    ex = MILExecutor(root / "unet_FLOAT16.mlpackage")
    assert ex.op_counts.get("cast", 0) >= 2  # fp32 inputs cast to fp16 and back: casts are honoured
    out = ex.predict(feed)["noise_pred"]
    assert out.dtype == np.float32
    error = np.abs(out - ref).max()
    assert 0 < error < 0.05  # really ran in fp16 (not bit-equal to fp32), and close
    assert psnr(out, ref) >= 35.0


def test_palettized_6bit_package_runs(unet_packages):
    root, models, feed, ref = unet_packages
    config = ct.optimize.coreml.OptimizationConfig(
        global_config=ct.optimize.coreml.OpPalettizerConfig(nbits=6, mode="kmeans")
    )
    palettized = ct.optimize.coreml.palettize_weights(models["FLOAT16"], config)
    path = root / "unet_6bit.mlpackage"
    palettized.save(str(path))
    ex = MILExecutor(path)
    assert ex.op_counts.get("constexpr_lut_to_dense", 0) > 0
    out = ex.predict(feed)["noise_pred"]
    assert np.isfinite(out).all()
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99


def test_predict_rejects_bad_inputs(unet_packages):
    root, _, feed, _ = unet_packages
    ex = MILExecutor(root / "unet_FLOAT32.mlpackage")
    with pytest.raises(KeyError):
        ex.predict({k: v for k, v in feed.items() if k != "timestep"})
    with pytest.raises(KeyError):
        ex.predict({**feed, "bogus": np.zeros(1)})
    with pytest.raises(ValueError):
        ex.predict({**feed, "sample": np.zeros((1, 4, 16, 16), np.float32)})


class _ConvZoo(nn.Module):
    """Exercises the executor's hand-written kernels."""

    def __init__(self):
        super().__init__()
        self.strided_grouped = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4)
        self.dilated = nn.Conv2d(12, 12, 3, padding=2, dilation=2, bias=False)
        self.asym = nn.Conv2d(12, 6, (1, 3), stride=(1, 2), padding=(0, 1))
        self.same = nn.Conv2d(6, 6, 3, padding="same")
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.deconv = nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1, groups=2)
        self.conv1d = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        x = nn.functional.silu(self.strided_grouped(x))  # (1, 12, 8, 8)
        x = self.dilated(x)
        x = self.asym(x)  # (1, 6, 8, 4)
        x = self.up(self.same(x))  # (1, 6, 16, 8)
        x = self.deconv(x)  # (1, 4, 32, 16)
        b, c, h, w = x.shape
        return self.conv1d(x.reshape(b, c, h * w)).reshape(b, c, h, w)


def test_conv_kernels_match_pytorch(tmp_path):
    torch.manual_seed(2)
    model = _ConvZoo().eval()
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        ref = model(x).numpy()
        traced = torch.jit.trace(model, (x,), check_trace=False)
    convert(traced, [("x", x, None)], ["y"], ct.precision.FLOAT32, tmp_path / "zoo.mlpackage")
    ex = MILExecutor(tmp_path / "zoo.mlpackage")
    for op_type in ("conv", "conv_transpose", "silu", "upsample_nearest_neighbor"):
        assert ex.op_counts.get(op_type, 0) > 0, op_type
    out = ex.predict({"x": x.numpy()})["y"]
    assert np.abs(out - ref).max() < 1e-4


@pytest.mark.parametrize(
    "stride,padding,dilation,groups", [(1, 0, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1), (2, 3, 3, 4)]
)
def test_numpy_conv_fallback_matches_torch(stride, padding, dilation, groups):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 11, 9)).astype(np.float32)
    w = rng.standard_normal((12, 8 // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    ref = nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, padding, dilation, groups
    ).numpy()
    out = mil._conv_numpy(x, w, b, [stride] * 2, [padding] * 4, [dilation] * 2, groups)
    assert np.abs(out - ref).max() < 1e-4


def test_clip_text_encoder_package_matches_pytorch(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(4)
    config = CLIPTextConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000,
        max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=999,
    )
    encoder = rw.rewrite_clip_text_model(CLIPTextModel(config).eval()).eval()
    ids = torch.randint(0, 998, (1, 77), dtype=torch.int32)
    ids[0, 0], ids[0, 12:] = 998, 999
    with torch.no_grad():
        traced = torch.jit.trace(encoder, (ids,), check_trace=False)
        last, pooled = encoder(ids)
    path = tmp_path / "text.mlpackage"
    convert(traced, [("input_ids", ids, np.int32)], ["last_hidden_state", "pooled_outputs"], ct.precision.FLOAT32, path)
    out = MILExecutor(path).predict({"input_ids": ids.numpy()})
    assert np.abs(out["last_hidden_state"] - last.numpy()).max() < 1e-4
    assert np.abs(out["pooled_outputs"] - pooled.numpy()).max() < 1e-4


def test_vae_decoder_fp16_package_psnr(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(5)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
        norm_num_groups=8, layers_per_block=1, sample_size=32,
    ).eval()
    decoder = rw.VAEDecoderANEWrapper(rw.rewrite_vae(vae)).eval()
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        traced = torch.jit.trace(decoder, (z,), check_trace=False)
        ref = decoder(z).numpy()
    path = tmp_path / "decoder.mlpackage"
    convert(traced, [("z", z, None)], ["image"], ct.precision.FLOAT16, path)
    out = MILExecutor(path).predict({"z": z.numpy()})["image"]
    assert out.shape == (1, 3, 16, 16)
    assert psnr(out, ref) >= 35.0
