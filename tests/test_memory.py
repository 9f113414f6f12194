"""segdiff.memory's estimate follows the network as it runs: its layout (segdiff.model.layout), attention on
the fused kernel (memory linear in the positions), and the network calls the predictor makes."""

import pytest
import torch

from conftest import tiny_config
from segdiff.api import SegDiff
from segdiff.config import preset
from segdiff.memory import network_bytes, predict_bytes
from segdiff.model import layout


def test_attention_memory_grows_with_the_positions_not_their_square():
    cfg = preset("tiny")
    small, large = (network_bytes(cfg, 1, s, s, 4)["attention"] for s in (256, 512))
    assert large == 4 * small  # 4x the positions; the math kernel's [L, L] scores grew 16x


def test_the_estimate_reads_the_models_layout():
    cfg = preset("tiny")
    lay = layout(cfg.model)
    ds = min(lv.ds for lv in lay.attention)
    assert network_bytes(cfg, 1, 600, 600, 4)["positions"] == (600 // ds) ** 2 == 22500
    # issue 19: one 512 x 512 image in pad mode, one generation, well under 2.5 GB (the math kernel's
    # scores alone were 2 x 4 heads x 16384^2 x 4 B = 8.6 GB; measured peak now 0.6 GB, docs/results.md)
    assert predict_bytes(cfg, 1, 1, 512, 512, torch.device("cpu"))["total"] < 1.0 * 2**30


@pytest.mark.parametrize(
    "shape,opts",
    [
        ((20, 28), {"generations": 3, "batch_generations": 2}),  # generations of one image split
        ((20, 28), {"generations": 2, "batch_generations": 8}),  # whole images per batch
        ((40, 40), {"generations": 2, "batch_generations": 4, "mode": "tile"}),  # windows, 2 per call
        ((40, 40), {"generations": 2, "batch_generations": 8, "mode": "resize"}),
    ],
)
def test_network_batch_is_the_call_the_predictor_makes(shape, opts):
    """What check_prediction estimates (Predictor.network_batch: input size, rows) is the largest network
    call predict makes."""
    model = SegDiff(tiny_config(), "cpu")
    calls = []
    model.net.register_forward_hook(lambda mod, args, out: calls.append(tuple(args[0].shape)))
    o = model.sampling_options(steps=2, **opts)
    model.predict(torch.rand(2, 3, *shape), opts=o)
    (h, w), _, rows = model.predictor.network_batch(shape, 2, o)
    assert max(calls) == (rows, 1, h, w)
