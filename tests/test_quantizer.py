"""Fake-quant for QAT: the weight and activation rules, the straight-through gradient, layer selection."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scripts.quantization.fake_quant import (
    ACTIVATION_QMAX,
    SCALE_EPS,
    FakeQuantLinear,
    activation_groups,
    apply_fake_quant,
    dequantize_weight,
    fake_quantize_activation,
    fake_quantize_weight,
    quantize_weight_symmetric,
    remove_fake_quant,
)


def _weight() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # Rows of very different magnitude: where per-channel scales pay off.
    return torch.randn(48, 40, generator=g) * torch.logspace(-3, 0, 48)[:, None]


@pytest.mark.parametrize("per_channel", [True, False])
def test_quantize_error_bounded_by_half_scale(per_channel: bool) -> None:
    w = _weight()
    q, scale = quantize_weight_symmetric(w, per_channel=per_channel)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert int(q.min()) >= -127 and int(q.max()) <= 127
    assert scale.dtype == torch.float32
    assert scale.shape == ((48,) if per_channel else ())
    err = (dequantize_weight(q, scale) - w).abs()
    bound = (scale[:, None] if per_channel else scale) / 2
    assert bool((err <= bound * (1 + 1e-5)).all())
    # max|w| maps onto the edge of the grid: every row (per channel) / the tensor (per tensor) hits 127.
    if per_channel:
        assert bool((q.abs().amax(dim=1) == 127).all())
        torch.testing.assert_close(scale, w.abs().amax(dim=1) / 127)
    else:
        assert int(q.abs().max()) == 127
        torch.testing.assert_close(scale, w.abs().max() / 127)


def test_per_channel_beats_per_tensor_on_uneven_rows() -> None:
    w = _weight()
    rel = {}
    for pc in (True, False):
        err = dequantize_weight(*quantize_weight_symmetric(w, per_channel=pc)) - w
        rel[pc] = err.norm(dim=1) / w.norm(dim=1)  # relative error of each output channel
    assert float(rel[True].max()) < 0.02  # every row keeps ~7 bits of its own range
    assert float(rel[False][:8].min()) > 0.5  # small rows mostly round to 0 under one shared scale


def test_zero_rows_get_the_epsilon_scale_not_nan() -> None:
    w = _weight()
    w[3] = 0
    q, scale = quantize_weight_symmetric(w)
    assert float(scale[3]) == pytest.approx(SCALE_EPS)
    assert bool((q[3] == 0).all())
    assert bool(torch.isfinite(fake_quantize_weight(w)).all())


@pytest.mark.parametrize("per_channel", [True, False])
def test_fake_quant_is_bit_identical_to_quantize_dequantize(per_channel: bool) -> None:
    w = _weight()
    assert torch.equal(fake_quantize_weight(w, per_channel), dequantize_weight(*quantize_weight_symmetric(w, per_channel)))


def test_lower_bits_use_the_smaller_symmetric_range() -> None:
    q, _ = quantize_weight_symmetric(_weight(), bits=4)
    assert int(q.abs().max()) == 7
    with pytest.raises(ValueError):
        quantize_weight_symmetric(_weight(), bits=9)


@pytest.mark.parametrize("per_channel", [True, False])
def test_straight_through_gradient(per_channel: bool) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(40, 48)
    fq = FakeQuantLinear.from_linear(lin, per_channel=per_channel)
    x = torch.randn(5, 40, requires_grad=True)
    fq(x).pow(2).sum().backward()
    # STE: the gradients w.r.t. the float weight and input are those w.r.t. the quantized ones.
    w_q = fake_quantize_weight(lin.weight.detach(), per_channel).requires_grad_()
    x_q = fake_quantize_activation(x.detach()).requires_grad_()
    b = lin.bias.detach().clone().requires_grad_()
    F.linear(x_q, w_q, b).pow(2).sum().backward()
    torch.testing.assert_close(lin.weight.grad, w_q.grad)
    torch.testing.assert_close(lin.bias.grad, b.grad)
    torch.testing.assert_close(x.grad, x_q.grad)
    assert float(lin.weight.grad.abs().sum()) > 0


def test_activations_get_seven_bit_ranges_per_image_as_the_runtimes_do() -> None:
    torch.manual_seed(0)
    x = torch.cat([torch.randn(3, 10, 16), 20 * torch.randn(3, 10, 16)])  # image 2's range is 20x wider
    per_image = torch.cat([fake_quantize_activation(x[:3], groups=1), fake_quantize_activation(x[3:], groups=1)])
    with activation_groups(2):
        torch.testing.assert_close(fake_quantize_activation(x), per_image)  # two images, one range each
    assert not torch.equal(fake_quantize_activation(x, groups=1), per_image)  # one range for both: coarser image 1
    lo, hi = min(float(x[:3].min()), 0.0), max(float(x[:3].max()), 0.0)
    scale = (hi - lo) / ACTIVATION_QMAX
    codes = per_image[:3] / scale + round(-lo / scale)  # the uint8 codes the runtimes compute with
    torch.testing.assert_close(codes, torch.round(codes), atol=1e-3, rtol=0)  # on the grid
    assert 0 <= float(codes.min()) < 1 and 126 < float(codes.max()) <= 127 + 1e-3  # 7 bits: 0..127, not 0..255
    lin = nn.Linear(16, 8)
    weights_only = FakeQuantLinear.from_linear(lin, activations=None)
    torch.testing.assert_close(weights_only(x), F.linear(x, fake_quantize_weight(lin.weight), lin.bias))


def test_fake_quant_linear_keeps_linear_state_dict_and_parameters() -> None:
    lin = nn.Linear(8, 4)
    fq = FakeQuantLinear.from_linear(lin)
    assert isinstance(fq, nn.Linear)
    assert list(fq.state_dict()) == list(lin.state_dict()) == ["weight", "bias"]
    assert fq.weight is lin.weight and fq.bias is lin.bias  # shared: an optimizer built earlier still works
    fresh = FakeQuantLinear(8, 4)
    fresh.load_state_dict(lin.state_dict())
    back = fq.to_linear()
    assert type(back) is nn.Linear and back.weight is lin.weight
    x = torch.randn(3, 8)
    torch.testing.assert_close(back(x), lin(x))
    torch.testing.assert_close(fq(x), F.linear(fake_quantize_activation(x), fake_quantize_weight(lin.weight), lin.bias))
    assert not torch.allclose(fq(x), lin(x), rtol=0, atol=1e-7)  # it really quantizes
    no_bias = FakeQuantLinear.from_linear(nn.Linear(8, 4, bias=False))
    assert no_bias.bias is None and no_bias(x).shape == (3, 4)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)
        self.attn = nn.MultiheadAttention(8, 2)  # out_proj is a Linear *subclass*
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def test_apply_fake_quant_default_selects_plain_linears_only() -> None:
    net = _Net()
    names = apply_fake_quant(net)
    assert names == ["encoder.0", "encoder.2", "head"]
    assert type(net.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert [n for n, m in net.named_modules() if isinstance(m, FakeQuantLinear)] == names
    assert apply_fake_quant(net) == []  # idempotent


def test_apply_fake_quant_respects_keep_float_and_patterns() -> None:
    net = _Net()
    assert apply_fake_quant(net, keep_float=["head", "*.2"]) == ["encoder.0"]
    assert type(net.head) is nn.Linear and type(net.encoder[2]) is nn.Linear
    net = _Net()
    assert apply_fake_quant(net, quantize=["encoder.*"], keep_float=["encoder.0"]) == ["encoder.2"]
    net = _Net()
    assert apply_fake_quant(net, quantize=lambda name, m: m.out_features == 2) == ["head"]


def test_linear_subclass_needs_an_explicit_name() -> None:
    net = _Net()
    assert "attn.out_proj" not in apply_fake_quant(net, quantize=["*"])
    net = _Net()
    assert apply_fake_quant(net, quantize=["attn.out_proj"]) == ["attn.out_proj"]
    assert isinstance(net.attn.out_proj, FakeQuantLinear)


def test_apply_fake_quant_per_tensor_flag_and_shared_modules() -> None:
    net = _Net()
    net.alias = net.head  # one module under two names
    apply_fake_quant(net, per_channel=False)
    assert isinstance(net.alias, FakeQuantLinear) and net.alias is net.head
    assert net.head.per_channel is False


def test_remove_fake_quant_restores_the_float_model() -> None:
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(4, 8)
    ref = net(x)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    apply_fake_quant(net)
    assert set(net.state_dict()) == set(before)
    assert remove_fake_quant(net) == ["encoder.0", "encoder.2", "head"]
    assert not any(isinstance(m, FakeQuantLinear) for m in net.modules())
    torch.testing.assert_close(net(x), ref)


def test_root_linear_is_refused() -> None:
    with pytest.raises(ValueError):
        apply_fake_quant(nn.Linear(2, 2))
