"""SA -> ClassConditionalUNet conversion, checked against a re-implementation of SA's `Conditional_Model`.

`SAModel` below rebuilds SA's network (docs/peers.md: SA, and its conversion) with SA's parameter names and forward, so
that a converted checkpoint must reproduce its outputs, for a class and for the null class.
"""

import json
import math
import pickle
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from erasediff.backbones.unets import ClassConditionalUNet, cifar10_sa_config
from erasediff.checkpoint import resolve_pretrained
from erasediff.convert import (
    convert_sa_checkpoint,
    convert_sa_fisher,
    convert_sa_state_dict,
)
from erasediff.errors import ErasediffError

# The small SA model (ch=32, ch_mult=(1, 2), one res block, attention at 8x8, 16px, GroupNorm(8)) and ours.
SMALL_SA = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16, groups=8)
SMALL_ARCH = dict(sample_size=16, in_channels=3, out_channels=3, num_classes=10, block_out_channels=(32, 64),
                  layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), mid_block_attention=True, attention_head_dim=64,
                  norm_num_groups=8)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """DDIM sinusoid: (B,) -> (B, dim), [sin, cos] with frequencies exp(-ln(1e4) i / (dim/2 - 1)).

    Same float32 operation order as SA/DDIM (diffusers rounds differently: up to 3e-5 apart at t=999).
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def dense(c_in: int, c_out: int) -> nn.Module:
    m = nn.Module()
    m.dense = nn.ModuleList([nn.Linear(c_in, c_out), nn.Linear(c_out, c_out)])
    return m


def mlp(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.dense[1](F.silu(m.dense[0](x)))


class SAResnet(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb_cemb_proj = nn.Linear(2 * emb, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=1e-6)
        self.dropout = nn.Dropout(0.1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x, temb, cemb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_cemb_proj(F.silu(torch.cat([temb, cemb], dim=-1)))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class SAAttn(nn.Module):
    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(b, c, hh * ww) for m in (self.q, self.k, self.v))  # (B, C, HW)
        w = torch.softmax(q.transpose(1, 2) @ k * c ** -0.5, dim=2)  # (B, HW_q, HW_k), single head
        return x + self.proj_out((v @ w.transpose(1, 2)).reshape(b, c, hh, ww))


class SAModel(nn.Module):
    """SA's Conditional_Model: DDIM UNet; up levels stored highest resolution first (up.0 = full size)."""

    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, groups, n_classes=10, in_ch=3):
        super().__init__()
        self.ch, emb = ch, 4 * ch
        self.temb, self.cemb = dense(ch, emb), dense(ch, emb)
        self.classes_emb = nn.Embedding(n_classes, ch)
        self.null_classes_emb = nn.Parameter(torch.randn(ch))
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        cur, res, skips, n = ch, resolution, [ch], len(ch_mult)
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                level.block.append(SAResnet(cur, ch * mult, emb, groups))
                cur = ch * mult
                if res in attn_resolutions:
                    level.attn.append(SAAttn(cur, groups))
                skips.append(cur)
            if i != n - 1:
                level.downsample = nn.Module()
                level.downsample.conv = nn.Conv2d(cur, cur, 3, stride=2)
                res //= 2
                skips.append(cur)
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1 = SAResnet(cur, cur, emb, groups), SAAttn(cur, groups)
        self.mid.block_2 = SAResnet(cur, cur, emb, groups)
        up = []
        for i in reversed(range(n)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(SAResnet(cur + skips.pop(), ch * ch_mult[i], emb, groups))
                cur = ch * ch_mult[i]
                if res in attn_resolutions:
                    level.attn.append(SAAttn(cur, groups))
            if i != 0:
                level.upsample = nn.Module()
                level.upsample.conv = nn.Conv2d(cur, cur, 3, padding=1)
                res *= 2
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = nn.GroupNorm(groups, cur, eps=1e-6)
        self.conv_out = nn.Conv2d(cur, in_ch, 3, padding=1)

    def forward(self, x, t, c, null=False):
        """x (B,3,H,W), t (B,), c (B,); null: SA's cond_drop_prob=1 (class vector -> null_classes_emb)."""
        temb = mlp(self.temb, timestep_embedding(t, self.ch))
        cemb = mlp(self.cemb, self.null_classes_emb.expand(len(c), -1) if null else self.classes_emb(c))
        hs = [self.conv_in(x)]
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb, cemb)
                hs.append(level.attn[j](h) if len(level.attn) else h)
            if hasattr(level, "downsample"):
                hs.append(level.downsample.conv(F.pad(hs[-1], (0, 1, 0, 1))))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb, cemb)), temb, cemb)
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb, cemb)
                h = level.attn[j](h) if len(level.attn) else h
            if hasattr(level, "upsample"):
                h = level.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def sa_model(seed: int = 0) -> SAModel:
    """Small SA model, every parameter moved off its init; outputs of order 1 (max about 2.6), like ε."""
    torch.manual_seed(seed)
    model = SAModel(**SMALL_SA)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def save_sa_checkpoint(path, model: SAModel, ema: dict | None, step: int = 4321) -> None:
    """torch.save SA's list [DataParallel state_dict, Adam state_dict, step, (EMA shadow)]."""
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    opt = torch.optim.Adam(params, lr=2e-4)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    states = [{f"module.{k}": v for k, v in model.state_dict().items()}, opt.state_dict(), step]
    torch.save(states + ([ema] if ema is not None else []), path)


def ema_shadow(model: SAModel) -> dict:
    g = torch.Generator().manual_seed(7)
    return {k: v.detach() + 0.02 * torch.randn(v.shape, generator=g) for k, v in model.named_parameters()}


def max_diff(sa: SAModel, ours: ClassConditionalUNet) -> float:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 16, 16, generator=g)
    c = torch.tensor([0, 3, 7, 9])
    worst = 0.0
    with torch.no_grad():
        for t in (0, 1, 250, 500, 998, 999):
            tt = torch.full((4,), t)
            ref_c, ref_null = sa(x, tt, c), sa(x, tt, c, null=True)
            assert (ref_c - ref_null).abs().max() > 1e-2  # the two passes differ: the check is not vacuous
            worst = max(worst, (ours(x, tt, c) - ref_c).abs().max().item(),
                        (ours(x, tt, torch.full((4,), 10)) - ref_null).abs().max().item())
    return worst


def test_cifar10_sa_layout_maps_onto_class_conditional_unet():
    with torch.device("meta"):
        sa = SAModel(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), resolution=32, groups=32)
        ours = ClassConditionalUNet(**cifar10_sa_config())
    assert sum(p.numel() for p in sa.parameters()) == 38_632_323  # docs/peers.md "Selective Amnesia"
    converted = convert_sa_state_dict({f"module.{k}": v for k, v in sa.state_dict().items()})
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.state_dict().items()}


def test_converted_checkpoint_reproduces_sa_outputs(tmp_path):
    sa = sa_model()
    ema = ema_shadow(sa)
    save_sa_checkpoint(tmp_path / "ckpt.pth", sa, ema)
    info = convert_sa_checkpoint(tmp_path / "ckpt.pth", tmp_path / "run", arch=SMALL_ARCH)

    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["COMPLETE", "conversion.json", "model", "model_ema"]
    assert json.loads((tmp_path / "run" / "conversion.json").read_text()) == info
    assert info["step"] == 4321 and info["parts"]["model_ema"]
    assert info["source"] == str((tmp_path / "ckpt.pth").resolve())
    run = tmp_path / "run"
    assert resolve_pretrained(str(run)) == (str(run / "model"), str(run / "model_ema"))

    model = ClassConditionalUNet.from_pretrained(tmp_path / "run" / "model").eval()
    table = model.class_table.weight.detach()
    assert torch.equal(table[:10], sa.classes_emb.weight.detach())
    assert torch.equal(table[10], sa.null_classes_emb.detach())
    assert max_diff(sa, model) < 1e-5

    ema_model = ClassConditionalUNet.from_pretrained(tmp_path / "run" / "model_ema").eval()
    expected = convert_sa_state_dict(ema)
    assert all(torch.equal(v, expected[k]) for k, v in ema_model.state_dict().items())
    sa.load_state_dict(ema)
    assert max_diff(sa, ema_model) < 1e-5


def test_checkpoint_without_ema(tmp_path):
    save_sa_checkpoint(tmp_path / "ckpt.pth", sa_model(), None)
    info = convert_sa_checkpoint(tmp_path / "ckpt.pth", tmp_path / "run", arch=SMALL_ARCH)
    assert not info["parts"]["model_ema"] and not (tmp_path / "run" / "model_ema").exists()
    assert resolve_pretrained(str(tmp_path / "run"))[1] is None


def _missing(sd):
    sd.pop("module.mid.attn_1.k.bias")


def _extra(sd):
    sd["module.logvar"] = torch.zeros(1000)


def _reshaped(sd):
    sd["module.down.0.block.0.conv1.weight"] = torch.zeros(32, 3, 3, 3)


@pytest.mark.parametrize("damage, match", [(_missing, "missing: unet.mid_block.attentions.0.to_k.bias"),
                                           (_extra, "unmapped keys: logvar"),
                                           (_reshaped, r"conv1.weight \(32, 3, 3, 3\) vs \(32, 32, 3, 3\)")])
def test_wrong_architecture_is_refused(tmp_path, damage, match):
    sd = {f"module.{k}": v for k, v in sa_model().state_dict().items()}
    damage(sd)
    torch.save([sd, {}, 10], tmp_path / "ckpt.pth")
    with pytest.raises(ErasediffError, match=match) as err:
        convert_sa_checkpoint(tmp_path / "ckpt.pth", tmp_path / "run", arch=SMALL_ARCH)
    assert str(tmp_path / "ckpt.pth") in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == [tmp_path / "ckpt.pth"]  # nothing written, no temporary left


def test_cifar10_default_arch_refuses_small_checkpoint(tmp_path):
    save_sa_checkpoint(tmp_path / "ckpt.pth", sa_model(), None)
    with pytest.raises(ErasediffError, match=r"ckpt.pth \(model\) does not match .*block_out_channels=\(128, 256"):
        convert_sa_checkpoint(tmp_path / "ckpt.pth", tmp_path / "run")


@pytest.mark.parametrize("content, match", [
    ({"module.conv_in.weight": torch.zeros(1)}, "is a dict, not SA's ckpt.pth"),
    ([torch.zeros(1), {}, 3], "is a list of length 3, not"),
    ([{}, {}, 3, {}, 5], "list of length 5"),
    ([{}, {}, types.SimpleNamespace(step=3)], "weights_only=True"),  # arbitrary Python object: never unpickled
    (b"not a torch file", "weights_only=True"),
])
def test_not_an_sa_checkpoint(tmp_path, content, match):
    path = tmp_path / "ckpt.pth"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    with pytest.raises(ErasediffError, match=match) as err:
        convert_sa_checkpoint(path, tmp_path / "run", arch=SMALL_ARCH)
    assert str(path) in str(err.value)
    assert not (tmp_path / "run").exists()


def test_out_dir_must_be_new_or_empty(tmp_path):
    save_sa_checkpoint(tmp_path / "ckpt.pth", sa_model(), None)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(ErasediffError, match="not empty"):
        convert_sa_checkpoint(tmp_path / "ckpt.pth", tmp_path / "run", arch=SMALL_ARCH)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["keep.txt"]
    (tmp_path / "run" / "keep.txt").unlink()
    convert_sa_checkpoint(tmp_path / "ckpt.pth", tmp_path / "run", arch=SMALL_ARCH)  # an empty one is fine
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def fisher_dict(seed: int = 5) -> dict:
    """SA's fisher_dict: DataParallel names -> non-negative tensors shaped like the parameters."""
    g = torch.Generator().manual_seed(seed)
    return {f"module.{k}": torch.rand(v.shape, generator=g) for k, v in sa_model().state_dict().items()}


def check_fisher(path, fisher: dict) -> None:
    got = load_file(path)
    assert got.keys() == ClassConditionalUNet(**SMALL_ARCH).state_dict().keys()
    expected = convert_sa_state_dict({k: torch.as_tensor(v) for k, v in fisher.items()})
    assert all(torch.equal(got[k], expected[k]) for k in got)
    assert torch.equal(got["class_table.weight"][10], torch.as_tensor(fisher["module.null_classes_emb"]))
    assert torch.equal(got["unet.mid_block.attentions.0.to_v.weight"], fisher["module.mid.attn_1.v.weight"][:, :, 0, 0])
    with safe_open(path, framework="pt") as f:
        assert f.metadata()["format"] == "erasediff-fisher-v1"


@pytest.mark.parametrize("dump", ["pickle", "torch.save"])
def test_tensor_only_fisher_needs_no_trust(tmp_path, dump):
    fisher = fisher_dict()
    src = tmp_path / "fisher_dict.pkl"
    if dump == "pickle":  # what SA writes: pickle.dump(fisher_dict, f)
        with src.open("wb") as f:
            pickle.dump(fisher, f)
    else:
        torch.save(fisher, src)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = convert_sa_fisher(src, tmp_path / "fisher.safetensors", arch=SMALL_ARCH)
    check_fisher(out, fisher)
    with pytest.raises(ErasediffError, match="already exists"):
        convert_sa_fisher(src, out, arch=SMALL_ARCH)


def test_fisher_with_python_objects_needs_trust(tmp_path):
    fisher = fisher_dict()
    fisher["module.conv_out.bias"] = fisher["module.conv_out.bias"].numpy()  # a non-tensor object in the pickle
    src, out = tmp_path / "fisher_dict.pkl", tmp_path / "fisher.safetensors"
    with src.open("wb") as f:
        pickle.dump(fisher, f)
    with pytest.raises(ErasediffError, match="trust_pickle=True") as err:
        convert_sa_fisher(src, out, arch=SMALL_ARCH)
    assert str(src) in str(err.value) and not out.exists()
    with pytest.warns(UserWarning, match="trusted source"):
        convert_sa_fisher(src, out, arch=SMALL_ARCH, trust_pickle=True)
    check_fisher(out, fisher)


def test_fisher_wrong_architecture(tmp_path):
    fisher = fisher_dict()
    del fisher["module.conv_in.bias"]
    src = tmp_path / "fisher_dict.pkl"
    with src.open("wb") as f:
        pickle.dump(fisher, f)
    with pytest.raises(ErasediffError, match="missing: unet.conv_in.bias"):
        convert_sa_fisher(src, tmp_path / "fisher.safetensors", arch=SMALL_ARCH)
    assert not (tmp_path / "fisher.safetensors").exists()
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x00 not a pickle")
    with pytest.raises(ErasediffError, match="cannot read .*garbage.pkl"):
        convert_sa_fisher(garbage, tmp_path / "fisher.safetensors", arch=SMALL_ARCH)
