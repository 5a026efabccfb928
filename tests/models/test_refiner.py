import pytest
import torch

from dbunet.config import tiny
from dbunet.errors import ConfigError
from dbunet.models.refiner import Refiner, swap_attributes


@pytest.fixture(scope="module")
def refiner():
    torch.manual_seed(0)
    return Refiner(tiny().refiner).eval()


@pytest.mark.parametrize("H,W", [(64, 64), (33, 47)])
@torch.no_grad()
def test_shapes(refiner, H, W):
    cfg = refiner.config
    x = torch.randn(2, 3, H, W)
    z_sem = refiner.semantic_encoder(x)
    code = refiner.gae.encode(z_sem)
    z_dis = refiner.gae.decode(code)
    assert z_sem.shape == (2, cfg.semantic_dim) and code.shape == (2, cfg.code_dim) and z_dis.shape == z_sem.shape
    eps = refiner.unet(x, torch.tensor([10.0, 900.0]), z_dis)
    assert eps.shape == x.shape and torch.isfinite(eps).all()


@torch.no_grad()
def test_condition_steers_the_unet(refiner):
    x = torch.randn(1, 3, 32, 32)
    t = torch.tensor([100.0])
    a = refiner.unet(x, t, torch.zeros(1, refiner.config.semantic_dim))
    b = refiner.unet(x, t, torch.randn(1, refiner.config.semantic_dim))
    assert (a - b).abs().max() > 1e-4


def test_swap_attributes_exchanges_exactly_the_named_groups():
    cfg = tiny().refiner
    a, b = torch.arange(100.0)[None], -torch.arange(100.0)[None]
    a2, b2 = swap_attributes(a, b, ["color", "lighting"], cfg)
    for name, _ in cfg.attribute_groups:
        s = cfg.attribute_slice(name)
        swapped = name in ("color", "lighting")
        assert torch.equal(a2[:, s], (b if swapped else a)[:, s])
        assert torch.equal(b2[:, s], (a if swapped else b)[:, s])
    with pytest.raises(ConfigError, match="valid: layout, shape"):
        swap_attributes(a, b, ["mood"], cfg)
