"""ClassConditionalUNet: SA parameter count, save/load round trip, conditioning, digits config (CPU)."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from erasediff.backbones.unets import ClassConditionalUNet, cifar10_sa_config

SMALL_ATTN = dict(sample_size=16, in_channels=3, out_channels=3, num_classes=10, block_out_channels=(32, 64),
                  layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), mid_block_attention=True,
                  attention_head_dim=64, norm_num_groups=8)
DIGITS = dict(sample_size=16, in_channels=1, out_channels=1, num_classes=10, block_out_channels=(32, 64, 64),
              layers_per_block=1, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
              mid_block_attention=False, norm_num_groups=8, dropout=0.0)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def perturbed_small_model(seed: int = 0) -> ClassConditionalUNet:
    """SMALL_ATTN with every parameter moved off its default init, in eval mode."""
    torch.manual_seed(seed)
    model = ClassConditionalUNet(**SMALL_ATTN)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def inputs(batch: int = 4, channels: int = 3, size: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=g)  # (B,C,H,W)
    t = torch.randint(0, 1000, (batch,), generator=g)  # (B,) int64
    return x, t


def test_cifar10_sa_config_matches_sa():
    model = ClassConditionalUNet(**cifar10_sa_config())
    assert n_params(model) == 38_632_323
    assert model.null_class == 10 and model.class_table.weight.shape == (11, 128)
    assert model.unet.mid_block.add_attention and len(model.unet.mid_block.attentions) == 1
    assert model.unet.mid_block.attentions[0] is not None and len(model.unet.mid_block.resnets) == 2
    assert model.unet.down_blocks[0].resnets[0].time_emb_proj.in_features == 1024  # SA temb_cemb_proj


def test_save_load_round_trip_is_exact(tmp_path):
    model = perturbed_small_model()
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    loaded, info = ClassConditionalUNet.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert all(not v for v in info.values()), info  # no missing / unexpected / mismatched keys
    loaded.eval()
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert loaded.unet.mid_block.attentions[0] is not None
    x, t = inputs()
    for labels in (torch.tensor([0, 3, 7, 9]), torch.full((4,), model.null_class)):
        with torch.no_grad():
            assert torch.equal(model(x, t, labels), loaded(x, t, labels))


def test_inner_unet_alone_loses_mid_attention(tmp_path):
    """The pitfall this class exists for; if diffusers changes it, this test says so."""
    model = perturbed_small_model()
    model.unet.save_pretrained(tmp_path / "inner")
    reloaded = UNet2DConditionModel.from_pretrained(tmp_path / "inner")
    assert reloaded.mid_block is None  # the whole hand-built mid block (resnet, attention, resnet) is gone


def test_shape_class_dependence_and_null_class():
    model = perturbed_small_model()
    x, t = inputs(batch=2)
    with torch.no_grad():
        out_a = model(x, t, torch.tensor([0, 0]))
        out_b = model(x, t, torch.tensor([1, 1]))
        out_null = model(x, t, torch.tensor([10, 10]))
        out_scalar_t = model(x, 500, torch.tensor([0, 0]))
    assert out_a.shape == x.shape and out_scalar_t.shape == x.shape and isinstance(out_a, torch.Tensor)
    assert not torch.allclose(out_a, out_b) and not torch.allclose(out_a, out_null)
    for bad in (torch.tensor([0, 11]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match="class_labels"):
            model(x, t, bad)


def test_constructor_rejects_inconsistent_args():
    with pytest.raises(ValueError, match="same length"):
        ClassConditionalUNet(**{**SMALL_ATTN, "up_block_types": ("UpBlock2D",)})
    with pytest.raises(ValueError, match="attention_head_dim"):
        ClassConditionalUNet(**{**SMALL_ATTN, "attention_head_dim": 48})


def test_digits_config_builds_and_trains():
    torch.manual_seed(0)
    model = ClassConditionalUNet(**DIGITS)
    assert 1_000_000 < n_params(model) < 1_300_000  # 1,144,641 with diffusers 0.42
    assert not model.unet.mid_block.add_attention and len(model.unet.mid_block.resnets) == 2
    x, t = inputs(batch=4, channels=1)
    out = model(x, t, torch.tensor([0, 1, 9, 10]))
    assert out.shape == x.shape
    ((out - torch.randn_like(out)) ** 2).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.class_table.weight.grad[[0, 1, 9, 10]].abs().sum(1).gt(0).all()
