from dataclasses import replace

import pytest
import torch

from conftest import tiny_config
from segdiff.api import SegDiff
from segdiff.config import preset
from segdiff.model import SegDiffUNet, build_network, layout
from segdiff.model.blocks import Attention


def _perturbed(net):
    # the output conv is zero-initialised; perturb every weight so that outputs depend on all inputs
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _net(**kw):
    torch.manual_seed(0)
    return _perturbed(SegDiffUNet(tiny_config(**kw).model, num_timesteps=10))


def test_output_shape_and_stride_error():
    net = _net()
    x, image, t = torch.randn(3, 1, 16, 24), torch.randn(3, 3, 16, 24), torch.tensor([0, 4, 9])
    assert net(x, t, net.encode_image(image)).shape == (3, 1, 16, 24)
    with pytest.raises(ValueError, match="multiple of the network stride"):
        net(torch.randn(1, 1, 15, 16), t[:1], net.encode_image(torch.randn(1, 3, 15, 16)))


def test_predict_any_size_pads_and_crops_back():
    model = SegDiff(tiny_config(), "cpu")
    out = model.predict(torch.rand(3, 13, 19), generations=2, steps=2)
    assert out.prob.shape == out.mask.shape == out.uncertainty.shape == (1, 13, 19)
    assert out.kind == "binary" and out.std is out.uncertainty and out.entropy is None
    assert out.prob.min() >= 0 and out.prob.max() <= 1


def test_cached_G_equals_recomputed_and_broadcast_equals_repeat():
    net = _net()
    image = torch.randn(2, 3, 16, 16)
    x = torch.randn(6, 1, 16, 16)  # 3 generations per image
    t = torch.tensor([1, 2, 3, 4, 5, 6])
    cond = net.encode_image(image)
    cached = net(x, t, cond)
    recomputed = net(x, t, net.encode_image(image.repeat_interleave(3, 0)))
    torch.testing.assert_close(cached, recomputed, rtol=1e-5, atol=1e-6)


def test_output_depends_on_image_and_time():
    net = _net()
    x, image = torch.randn(1, 1, 16, 16), torch.randn(1, 3, 16, 16)
    base = net(x, torch.tensor([3]), net.encode_image(image))
    assert not torch.allclose(base, net(x, torch.tensor([7]), net.encode_image(image)))
    assert not torch.allclose(base, net(x, torch.tensor([3]), net.encode_image(image + 1)))


def test_zero_initialised_output():
    net = SegDiffUNet(tiny_config().model, 10)
    eps = net(torch.randn(2, 1, 16, 16), torch.tensor([0, 1]), net.encode_image(torch.randn(2, 3, 16, 16)))
    assert torch.count_nonzero(eps) == 0


def test_learned_time_embedding_is_the_table_the_forward_pass_reads():
    """The paper's learned look-up table: one row per timestep, read by the forward pass (a changed row
    changes the output at its timestep only); a timestep beyond T is refused."""
    base = tiny_config()
    cfg = replace(base, model=replace(base.model, time_embedding="learned"))
    torch.manual_seed(0)
    net = _perturbed(build_network(cfg, "cpu"))
    table = net.time_embed.table
    assert table.num_embeddings == cfg.diffusion.steps == 10
    x, cond = torch.randn(2, 1, 16, 16), net.encode_image(torch.randn(2, 3, 16, 16))
    t = torch.tensor([3, 4])
    before = net(x, t, cond)
    assert not torch.allclose(before[0], net(x, torch.tensor([5, 4]), cond)[0])  # the output depends on t
    with torch.no_grad():
        table.weight[3] += 1.0
    after = net(x, t, cond)
    assert not torch.allclose(after[0], before[0])
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)
    with pytest.raises(IndexError):
        net(x, torch.tensor([10, 0]), cond)


@pytest.mark.parametrize("name,levels,attn_res", [("cityscapes", 6, 128), ("vaihingen", 7, 256), ("monuseg", 7, 256)])
def test_presets_put_attention_at_16_and_8(name, levels, attn_res):
    cfg = preset(name)
    assert len(cfg.model.channel_mult) == levels and cfg.model.model_channels == 128
    assert sorted(attn_res // ds for ds in cfg.model.attention_ds) == [8, 16]
    net = build_network(cfg, "meta")  # structure only: no 160M-parameter allocation
    n_attn = sum(isinstance(m, Attention) for m in net.modules())
    # encoder 3 blocks x 2 levels, decoder 4 blocks x 2 levels, middle 1
    assert n_attn == 3 * 2 + 4 * 2 + 1 == len(layout(cfg.model).attention)
    assert len(net.G.trunk) == cfg.model.rrdb_blocks
    # the model's layout (what segdiff.memory estimates from) at the training size: 16 x 16 and 8 x 8 maps
    # attended, and the middle block at the last level
    sides = sorted({cfg.data.size // lv.ds for lv in layout(cfg.model).attention if lv != layout(cfg.model).middle})
    assert sides == [8, 16] and layout(cfg.model).middle.ds == cfg.model.stride


def test_the_cityscapes_network_runs_at_a_small_size():
    """The preset's real network (162M parameters, built as training builds it) on one 32 x 32 image: every
    attention layer runs at the level the layout says, and the output has the mask's shape."""
    cfg = preset("cityscapes")
    torch.manual_seed(0)
    net = build_network(cfg, "cpu").eval()
    seen = []
    for m in net.modules():
        if isinstance(m, Attention):
            m.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[-1]))
    with torch.no_grad():
        out = net(torch.randn(1, 1, 32, 32), torch.tensor([50]), net.encode_image(torch.randn(1, 3, 32, 32)))
    assert out.shape == (1, 1, 32, 32) and torch.isfinite(out).all()
    assert sorted(seen) == sorted(32 // lv.ds for lv in layout(cfg.model).attention)
    assert sorted(set(seen)) == [1, 2, 4]  # 1/8, 1/16 and the middle block at 1/32


def test_layout_matches_the_network_it_builds():
    """segdiff.model.layout, which the memory estimate reads, is the network's shape: every skip's channels
    and resolution as the forward pass produces them, for the tiny preset and the test model."""
    for cfg in (preset("tiny"), tiny_config()):
        net = build_network(cfg, "cpu").eval()
        shapes: list[tuple[int, ...]] = []
        for block in net.encoder:
            block.register_forward_hook(lambda mod, args, out, shapes=shapes: shapes.append(tuple(out.shape[1:])))
        H = 4 * cfg.model.stride
        with torch.no_grad():
            net(torch.randn(1, 1, H, H), torch.tensor([0]), net.encode_image(torch.randn(1, 3, H, H)))
        skips = [(cfg.model.model_channels, H, H)] + shapes
        assert skips == [(lv.channels, H // lv.ds, H // lv.ds) for lv in net.layout.skips]


def test_predict_accepts_uint8_arrays_like_files():
    model = SegDiff(tiny_config(), "cpu")
    model.net = _net()  # perturbed weights: the output depends on the image's values
    rgb = (torch.rand(16, 16, 3) * 255).round().to(torch.uint8).numpy()
    a = model.predict(rgb, generations=2, steps=2, seed=3)
    b = model.predict(rgb.astype("float32") / 255, generations=2, steps=2, seed=3)
    c = model.predict(torch.from_numpy(rgb).permute(2, 0, 1), generations=2, steps=2, seed=3)
    torch.testing.assert_close(a.prob, b.prob)
    torch.testing.assert_close(a.prob, c.prob)
    wrong = model.predict(rgb.astype("float32"), generations=2, steps=2, seed=3)  # 0..255 taken as [0, 1]
    assert not torch.allclose(a.prob, wrong.prob)


def _attention_before_issue_19(att: Attention, x: torch.Tensor) -> torch.Tensor:
    """The layout of commit da62af6: q, k, v split from the 1x1 convolution's [N, 3C, L] output."""
    n, c, h, w = x.shape
    qkv = att.qkv(att.norm(x).reshape(n, c, h * w))
    q, k, v = qkv.reshape(n, 3, att.num_heads, c // att.num_heads, h * w).transpose(-1, -2).unbind(1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(n, c, h * w)
    return x + att.proj(out).reshape(n, c, h, w)


def test_attention_runs_on_the_fused_kernel_with_the_same_weights_and_result():
    """Issue 19, bug 2: q, k, v with a non-contiguous last dimension sent every call to SDPA's math kernel
    (O(L^2) memory). The fused CPU kernel must run; the weights (1x1 convolutions, the checkpoint's keys and
    shapes) and the result are those of the earlier layout."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    att = Attention(32, 4, 8)
    assert {k: tuple(v.shape) for k, v in att.state_dict().items()} == {
        "norm.weight": (32,), "norm.bias": (32,), "qkv.weight": (96, 32, 1), "qkv.bias": (96,),
        "proj.weight": (32, 32, 1), "proj.bias": (32,),
    }  # fmt: skip
    with torch.no_grad():
        for p in att.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 32, 12, 10)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        out = att(x)
    ops = {e.name for e in prof.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops, sorted(o for o in ops if "attention" in o)
    assert "aten::_scaled_dot_product_attention_math" not in ops
    with torch.no_grad():
        torch.testing.assert_close(out, _attention_before_issue_19(att, x), rtol=1e-5, atol=1e-6)
        cl = x.to(memory_format=torch.channels_last)  # predict's channels_last option
        torch.testing.assert_close(att(cl), _attention_before_issue_19(att, x), rtol=1e-5, atol=1e-6)
