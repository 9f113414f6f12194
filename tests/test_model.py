from dataclasses import replace

import pytest
import torch

from conftest import tiny_config
from segdiff.api import SegDiff
from segdiff.config import preset
from segdiff.model import SegDiffUNet
from segdiff.model.blocks import Attention


def _net(**kw):
    torch.manual_seed(0)
    net = SegDiffUNet(tiny_config(**kw).model, num_timesteps=10)
    # the output conv is zero-initialised; perturb every weight so that outputs depend on all inputs
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


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


def test_learned_time_embedding():
    cfg = replace(tiny_config().model, time_embedding="learned")
    net = SegDiffUNet(cfg, 10)
    assert net.time_embed.table.num_embeddings == 10


@pytest.mark.parametrize("name,levels,attn_res", [("cityscapes", 6, 128), ("vaihingen", 7, 256), ("monuseg", 7, 256)])
def test_presets_put_attention_at_16_and_8(name, levels, attn_res):
    cfg = preset(name)
    assert len(cfg.model.channel_mult) == levels and cfg.model.model_channels == 128
    assert sorted(attn_res // ds for ds in cfg.model.attention_ds) == [8, 16]
    if name == "cityscapes":
        return
    with torch.device("meta"):  # structure only: no 160M-parameter allocation
        net = SegDiffUNet(cfg.model, 100)
    n_attn = sum(isinstance(m, Attention) for m in net.modules())
    # encoder 3 blocks x 2 levels, decoder 4 blocks x 2 levels, middle 1
    assert n_attn == 3 * 2 + 4 * 2 + 1
    assert len(net.G.trunk) == cfg.model.rrdb_blocks


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
