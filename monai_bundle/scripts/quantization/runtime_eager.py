"""Real INT8 execution of quantized Linear layers on CPU.

Kernel choice (measured with ``scripts/bench_int8_kernels.py`` on a 2-core AVX-512 VNNI EPYC,
torch 2.14, 2 threads, SAM ViT-B shapes M=4096 and 256 tokens x K=768 x N=2304/768/3072 and
K=3072 x N=768): ``quantized::linear_dynamic`` on a weight packed by the **oneDNN** quantized
engine was the fastest real int8 path, 3.0-4.2x faster than FP32 ``F.linear`` (fbgemm-packed:
5-25% slower; ``torch._int_mm`` with per-token activation quantization in eager: ~2x slower, the
quantize and rescale passes being separate ops; ``aten._weight_int8pack_mm`` on FP32 input: ~40x
slower than FP32; torchao's int8 configs in eager run the same unfused ops, or dequantize then
matmul; torch.compile of torchao's dynamic config approached but did not beat oneDNN). It quantizes the activation dynamically inside the op: per tensor, asymmetric
uint8, then int8 x uint8 GEMM with int32 accumulation and the float rescale + bias fused.

Activations use 7 bits (``reduce_range=True``) on every CPU, as the onnxruntime graph does and stage 2
simulates (``fake_quant.ACTIVATION_QMAX``, whose docstring says why): the same numerics everywhere, and no
int16 overflow on CPUs without VNNI/AMX.

Trade-off (documented, not hidden): per-tensor activation quantization is less accurate than
per-token when a few channels carry outliers, and the activation range of one sample depends on
the others in the batch (inference runs one image at a time). ``backend="int_mm"`` selects per-token symmetric activations with
``torch._int_mm`` instead (slower on CPU; also the path used off-CPU).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch
import torch.nn as nn

from .fake_quant import dequantize_weight, quantize_weight_symmetric

BACKENDS = ("auto", "qlinear_dynamic", "int_mm")


def _preferred_qengine() -> str | None:
    """oneDNN (fastest measured), else fbgemm; None when torch was built without either."""
    engines = torch.backends.quantized.supported_engines
    for name in ("onednn", "fbgemm"):
        if name in engines:
            return name
    return None


@contextlib.contextmanager
def _qengine(name: str) -> Iterator[None]:
    """Select the quantized engine for packing only; the packed object remembers its backend."""
    prev = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = prev


def _pack_weight(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, engine: str) -> Any:
    """Prepacked weight for ``quantized::linear_dynamic`` (needs the legacy qint8 tensor type)."""
    with warnings.catch_warnings():
        # Quantized tensor creation is deprecated in torch; linear_prepack still requires it.
        warnings.simplefilter("ignore")
        if scale.dim() == 0:
            qw = torch._make_per_tensor_quantized_tensor(q, float(scale), 0)
        else:
            zero_points = torch.zeros(scale.shape, dtype=torch.long)
            qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zero_points, 0)
    with _qengine(engine):
        return torch.ops.quantized.linear_prepack(qw, bias)


def _int_mm_per_token(x: torch.Tensor, q_t: torch.Tensor, scale: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """Per-token symmetric int8 activations x int8 weight via ``torch._int_mm`` (int32 accumulate).

    Hand-written quantize/rescale because torch has no fused per-token dynamic int8 linear op.
    """
    lo, hi = torch.aminmax(x, dim=-1, keepdim=True)  # one pass, instead of abs() then amax()
    amax = torch.maximum(-lo, hi).clamp_min_(1e-12)
    xq = torch.round(x * (127.0 / amax)).to(torch.int8)  # |x * 127/amax| <= 127: no clamp needed
    acc = torch._int_mm(xq, q_t)
    out_scale = amax * (scale / 127.0)
    if bias is None:
        return acc * out_scale
    return torch.addcmul(bias, acc, out_scale)


class Int8Linear(nn.Module):
    """Inference-only Linear computing ``x @ (weight_int8 * weight_scale).T + bias`` with int8 GEMMs.

    State: buffers ``weight_int8`` [N, K] int8, ``weight_scale`` [N] (per channel) or 0-dim float32,
    ``bias`` [N] float32 or absent. The kernel's packed weight is derived from them lazily and
    rebuilt whenever they change (new tensor or in-place edit); it is never saved or pickled.
    Accepts any leading dims; non-float32 inputs are computed in float32 and cast back. No autograd.
    """

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor,
                 bias: torch.Tensor | None = None, backend: str = "auto") -> None:
        super().__init__()
        if weight_int8.dtype != torch.int8 or weight_int8.dim() != 2:
            raise ValueError(f"weight_int8 must be a 2-D int8 tensor, got {weight_int8.dtype} {tuple(weight_int8.shape)}")
        n, k = weight_int8.shape
        if weight_scale.dim() not in (0, 1) or (weight_scale.dim() == 1 and weight_scale.shape[0] != n):
            raise ValueError(f"weight_scale must be 0-dim or [{n}], got {tuple(weight_scale.shape)}")
        if bias is not None and tuple(bias.shape) != (n,):
            raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.in_features, self.out_features = k, n
        self.backend = backend
        self.register_buffer("weight_int8", weight_int8.detach().contiguous())
        self.register_buffer("weight_scale", weight_scale.detach().float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self._packed: Any = None
        self._packed_key: tuple | None = None

    @classmethod
    def from_float(cls, linear: nn.Linear, per_channel: bool = True, bits: int = 8,
                   backend: str = "auto") -> "Int8Linear":
        """Quantize a float Linear with the QAT rule (post-training, no calibration needed)."""
        q, scale = quantize_weight_symmetric(linear.weight, per_channel=per_channel, bits=bits)
        return cls(q, scale, linear.bias, backend=backend)

    def to_float(self) -> nn.Linear:
        """A float Linear holding ``weight_int8 * weight_scale``: the weights this layer computes with."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(dequantize_weight(self.weight_int8, self.weight_scale))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def _kernel_for(self, x: torch.Tensor) -> str:
        if self.backend != "auto":
            return self.backend
        if not (x.is_cpu and _preferred_qengine()):
            return "int_mm"
        try:
            self._packed_weight()
        except (RuntimeError, AttributeError, NotImplementedError) as exc:
            # torch has deprecated the quantized tensors that linear_prepack needs; if a future
            # release drops them, keep running (slower, still int8) rather than fail.
            warnings.warn(f"Int8Linear: quantized::linear_dynamic unavailable ({exc}); using torch._int_mm")
            self.backend = "int_mm"
            return "int_mm"
        return "qlinear_dynamic"

    def _packed_weight(self) -> Any:
        tensors = (self.weight_int8, self.weight_scale, self.bias)
        key = tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors)
        if self._packed is None or key != self._packed_key:
            engine = _preferred_qengine()
            if engine is None:
                raise RuntimeError("this torch build has no onednn/fbgemm quantized engine; use backend='int_mm'")
            self._packed = _pack_weight(self.weight_int8, self.weight_scale, self.bias, engine)
            self._packed_key = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype, lead = x.dtype, x.shape[:-1]
        x2 = x.float().reshape(-1, self.in_features)  # kernels take 2-D [tokens, K]
        if self._kernel_for(x2) == "qlinear_dynamic":
            y = torch.ops.quantized.linear_dynamic(x2, self._packed_weight(), True)  # 7-bit range, see docstring
        else:
            y = _int_mm_per_token(x2.contiguous(), self.weight_int8.t(), self.weight_scale, self.bias)
        return y.reshape(*lead, self.out_features).to(in_dtype)

    def __getstate__(self) -> dict:
        # The packed ScriptObject is a cache: drop it for pickling/deepcopy, it is rebuilt on use.
        state = self.__dict__.copy()
        state["_packed"], state["_packed_key"] = None, None
        return state

    def extra_repr(self) -> str:
        granularity = "per_channel" if self.weight_scale.dim() == 1 else "per_tensor"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {granularity}, backend={self.backend}")
