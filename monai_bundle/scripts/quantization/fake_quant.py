"""Fake-quantization for quantization-aware training (QAT) of SAM's Linear layers: weights and activations.

Why: the INT8 model rounds every selected Linear's weight to 8 bits and, at run time, its input too; training
with exactly that rounding in the forward pass (and a straight-through gradient in the backward pass) lets the
network adapt to what it will run with. Which layers stay float ("selective mixed precision") is chosen with
``apply_fake_quant(..., keep_float=[...])``.

Weights (shared with ``int8_artefact`` so the artefact holds the weights training saw, bit for bit): symmetric,
zero point 0, integers in [-qmax, qmax] with qmax = 2**(bits-1) - 1 (127 for 8 bits), scale = max|w| / qmax per
output channel (dim 0) or per tensor, floored at ``SCALE_EPS``.

Activations (``ACTIVATIONS``): what both INT8 runtimes do to a quantized layer's input, dynamic per-tensor
asymmetric quantization to ``ACTIVATION_QMAX + 1`` = 128 levels: range [min(x, 0), max(x, 0)] of the input,
scale = range / 127, zero point = round(-min / scale). Seven bits, not eight, because x86 int8 GEMMs without
VNNI/AMX sum pairs of uint8 x int8 products in int16 (vpmaddubsw), which full-range activations overflow: on such
a CPU (AVX2) a small SAM's logits moved by up to 2.6 with 8-bit activations, in torch and onnxruntime alike.
With 7 bits no pair can overflow, so the numerics are the same on every CPU (torch's ``reduce_range``; the
onnxruntime graph computes the same parameters, see ``runtime_onnx``). The runtimes see one image at a time, so
the range is taken per image (``activation_groups``), not over a training batch.

Why not torchao's QAT (``quantize_`` with a QAT config): its fake-quantizers use scale = max|w| / 127.5 for
symmetric int8 weights and one activation range over the whole tensor (the batch), neither of which is what the
shipped runtimes compute.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
from typing import Callable, Iterable, Iterator, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

# Same floor torch.ao's observers use; keeps all-zero rows/tensors from producing scale 0 (a
# division by zero in the quantizer, and an invalid scale for torch.fake_quantize_*).
SCALE_EPS = float(torch.finfo(torch.float32).eps)

Selector = Union[Callable[[str, nn.Module], bool], Sequence[str], None]
ACTIVATIONS = ("dynamic_per_tensor", None)  # None: weights only (the paper's code)
ACTIVATION_QMAX = 127  # uint8 codes 0..127: see the module docstring
_ACTIVATION_GROUPS: contextvars.ContextVar[int] = contextvars.ContextVar("adaqat_activation_groups", default=1)


@contextlib.contextmanager
def activation_groups(groups: int) -> Iterator[None]:
    """Inside the block, activation ranges are taken per group of the leading dimension (``groups`` images).

    The segmenter wraps its image encoder in this with the batch size: SAM's windowed attention folds windows
    into the batch dimension image by image, so ``x.reshape(groups, -1)`` keeps each image's values together.
    """
    token = _ACTIVATION_GROUPS.set(max(int(groups), 1))
    try:
        yield
    finally:
        _ACTIVATION_GROUPS.reset(token)


def fake_quantize_activation(x: torch.Tensor, groups: int | None = None) -> torch.Tensor:
    """Dynamic per-tensor asymmetric 7-bit quantize-dequantize of ``x``, one range per group (see module docstring)."""
    groups = _ACTIVATION_GROUPS.get() if groups is None else groups
    if x.numel() == 0 or x.shape[0] % groups:
        groups = 1
    flat = x.reshape(groups, -1)
    with torch.no_grad():
        lo = flat.amin(dim=1).clamp(max=0.0).float()
        hi = flat.amax(dim=1).clamp(min=0.0).float()
        scale = ((hi - lo) / ACTIVATION_QMAX).clamp_min(SCALE_EPS)
        zero_point = torch.round(-lo / scale).clamp(0, ACTIVATION_QMAX).to(torch.int32)
    return torch.fake_quantize_per_channel_affine(flat, scale, zero_point, 0, 0, ACTIVATION_QMAX).reshape(x.shape)


def _qmax(bits: int) -> int:
    """Largest integer of the symmetric range.

    Why 127 and not 128 for 8 bits: with [-127, 127] the grid is symmetric, so max|w| maps to +-127
    exactly with one scale and ``-q`` is always representable; using -128 would either waste it or
    need different scales for the two signs. It also keeps int8 kernels clear of the -128 * -128
    corner that overflows 16-bit pair sums (x86 vpmaddubsw without VNNI).
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8] (stored as int8), got {bits}")
    return 2 ** (bits - 1) - 1


def weight_scale(w: torch.Tensor, per_channel: bool = True, bits: int = 8) -> torch.Tensor:
    """Scale max|w|/qmax (float32, detached): shape [w.shape[0]] per channel, 0-dim per tensor."""
    w = w.detach().float()
    if per_channel:
        amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    else:
        amax = w.abs().amax()
    return (amax / _qmax(bits)).clamp_min(SCALE_EPS)


def quantize_weight_symmetric(
    w: torch.Tensor, per_channel: bool = True, bits: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (int8 weight, float32 scale) with ``w ~= q * scale`` (scale broadcast on dim 0).

    Rounds ``w * (1/scale)`` half-to-even, exactly as ``torch.fake_quantize_per_*_affine`` do, so
    ``q * scale`` is bit-identical to :func:`fake_quantize_weight`'s output.
    """
    qmax = _qmax(bits)
    scale = weight_scale(w, per_channel, bits)
    inv = 1.0 / scale
    if per_channel:
        inv = inv.reshape(-1, *([1] * (w.dim() - 1)))
    q = torch.round(w.detach().float() * inv).clamp_(-qmax, qmax).to(torch.int8)
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float32 ``q * scale`` with a per-channel scale broadcast on dim 0."""
    if scale.dim() == 1:
        scale = scale.reshape(-1, *([1] * (q.dim() - 1)))
    return q.float() * scale


def fake_quantize_weight(w: torch.Tensor, per_channel: bool = True, bits: int = 8) -> torch.Tensor:
    """Quantize-dequantize ``w`` in the forward pass; straight-through gradient in the backward.

    torch's fused fake-quant ops implement the STE (gradient 1 inside [-qmax, qmax], 0 outside;
    with scale = max|w|/qmax every weight is inside). The scale is recomputed from the current
    weight and detached, so no gradient flows through max|w|.
    """
    qmax = _qmax(bits)
    scale = weight_scale(w, per_channel, bits).to(w.device)
    if per_channel:
        zero_point = torch.zeros(scale.shape, dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, -qmax, qmax)
    zero_point = torch.zeros((), dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_tensor_affine(w, scale, zero_point, -qmax, qmax)


class FakeQuantLinear(nn.Linear):
    """``nn.Linear`` whose forward uses the fake-quantized weight.

    A subclass (not a wrapper) so parameter names stay ``weight``/``bias`` and state dicts are
    interchangeable with the float model.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, per_channel: bool = True,
                 bits: int = 8, activations: str | None = "dynamic_per_tensor", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        _qmax(bits)  # validate early
        if activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
        self.per_channel = per_channel
        self.bits = bits
        self.activations = activations

    @classmethod
    def from_linear(cls, linear: nn.Linear, per_channel: bool = True, bits: int = 8,
                    activations: str | None = "dynamic_per_tensor") -> "FakeQuantLinear":
        """Wrap ``linear``'s own Parameter objects (shared, not copied), so optimizers keep working."""
        fq = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                 per_channel=per_channel, bits=bits, activations=activations, device="meta")
        fq.weight = linear.weight
        fq.bias = linear.bias
        fq.train(linear.training)
        return fq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations is not None:
            x = fake_quantize_activation(x)
        return F.linear(x, fake_quantize_weight(self.weight, self.per_channel, self.bits), self.bias)

    def to_linear(self) -> nn.Linear:
        """Plain ``nn.Linear`` sharing this module's Parameter objects."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight = self.weight
        lin.bias = self.bias
        lin.train(self.training)
        return lin

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, per_channel={self.per_channel}, bits={self.bits}, activations={self.activations}"


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _selected(name: str, module: nn.Module, quantize: Selector) -> bool:
    """Whether ``quantize`` selects this Linear; subclasses of nn.Linear need an explicit choice."""
    plain = type(module) is nn.Linear
    if quantize is None:
        return plain
    if callable(quantize):
        return bool(quantize(name, module))
    if isinstance(quantize, str):
        raise TypeError("quantize must be a list of patterns, not a single string")
    if plain:
        return _matches(name, quantize)
    return name in quantize  # a subclass only when named literally, never through a wildcard


def _replace_modules(model: nn.Module, new_for: dict[int, nn.Module]) -> None:
    """Point every reference (also a module shared under several names) at its replacement."""
    for parent in model.modules():
        # ``_modules`` directly: named_children() hides a child already seen under another name.
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in new_for:
                setattr(parent, child_name, new_for[id(child)])


def apply_fake_quant(model: nn.Module, quantize: Selector = None, keep_float: Sequence[str] = (),
                     per_channel: bool = True, bits: int = 8, activations: str | None = "dynamic_per_tensor") -> list[str]:
    """Replace the selected Linear layers of ``model`` by :class:`FakeQuantLinear`, in place.

    ``quantize``: None = every module whose class is exactly ``nn.Linear``; a list of fnmatch
    patterns over qualified names (``"image_encoder.blocks.*.mlp.*"``); or ``fn(name, module)``.
    ``keep_float``: fnmatch patterns that always stay float (wins over ``quantize``).
    ``activations``: how the layers' inputs are fake-quantized (``ACTIVATIONS``; None: weights only).

    Only modules whose class is exactly ``nn.Linear`` are taken by default or by a wildcard.
    Subclasses (e.g. ``NonDynamicallyQuantizableLinear`` in ``nn.MultiheadAttention``, whose owner
    reads ``.weight`` directly so a new forward would not even run) are replaced only when named
    literally in the list or accepted by the callable. Modules that are not ``nn.Linear`` at all
    (peft's LoRA ``Linear`` wrapper) are never replaced; their inner ``base_layer`` and the
    ``lora_A``/``lora_B`` adapters are plain Linears and are selected like any other, so merge the
    adapters first or exclude them with ``keep_float=["*lora_*"]``. Existing FakeQuantLinear
    modules are left alone. Returns the qualified names replaced, in module order.
    """
    if isinstance(model, nn.Linear):
        raise ValueError("apply_fake_quant replaces children in place; pass the parent module")
    names: list[str] = []
    new_for: dict[int, nn.Module] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or isinstance(module, FakeQuantLinear):
            continue
        if _matches(name, keep_float) or not _selected(name, module, quantize):
            continue
        new_for[id(module)] = FakeQuantLinear.from_linear(module, per_channel=per_channel, bits=bits,
                                                          activations=activations)
        names.append(name)
    _replace_modules(model, new_for)
    return names


def remove_fake_quant(model: nn.Module) -> list[str]:
    """Turn every FakeQuantLinear back into a plain ``nn.Linear`` (same Parameters), in place."""
    names: list[str] = []
    new_for: dict[int, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, FakeQuantLinear):
            new_for[id(module)] = module.to_linear()
            names.append(name)
    _replace_modules(model, new_for)
    return names
