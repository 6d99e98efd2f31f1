"""torch.compile routes of the image encoder, for the benchmark's like-with-like comparison.

``compiled``: the FP32 encoder through ``torch.compile`` (Inductor). ``compiled_pt2e_int8``: the PT2E
route of torchao (``torch.export`` -> ``X86InductorQuantizer`` dynamic int8 Linears -> ``torch.compile``
with weight freezing), the float-kept layers left float. Both compile on the first forward pass (minutes
for ViT-B), so they are benchmark routes, not the default of ``load_model`` (see ``ort_runtime``).
PT2E re-quantizes the float weights with its own observer (scale = max|w|/127.5), so its int8 weights
are close to, not equal to, the artefact's (max|w|/127).
"""

from __future__ import annotations

import fnmatch
from typing import Sequence

import torch
import torch.nn as nn

ROUTES = ("compiled", "compiled_pt2e_int8")


def compile_encoder(network: nn.Module) -> nn.Module:
    """Replace ``network.sam.image_encoder`` by its ``torch.compile`` d form (compiled on first call)."""
    network.sam.image_encoder = torch.compile(network.sam.image_encoder)
    return network


def pt2e_int8_encoder(network: nn.Module, keep_float: Sequence[str] = ()) -> nn.Module:
    """Replace the encoder by its PT2E dynamic-int8, Inductor-compiled form; ``keep_float`` fnmatch names stay float."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    encoder = network.sam.image_encoder
    example = torch.zeros(1, 3, network.image_size, network.image_size)
    quantizer = xiq.X86InductorQuantizer()
    # Dynamic per-tensor activations, per-channel symmetric weights: the artefact's scheme.
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_dynamic=True))
    for name, module in encoder.named_modules():
        full = f"sam.image_encoder.{name}"
        if isinstance(module, nn.Linear) and any(fnmatch.fnmatchcase(full, p) for p in keep_float):
            quantizer.set_module_name_qconfig(name, None)
    exported = torch.export.export(encoder, (example,)).module()
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        prepared(example)  # observers see one input (dynamic activations need no calibration)
    converted = convert_pt2e(prepared)
    torch._inductor.config.freezing = True  # lets Inductor fold and prepack the int8 weights
    network.sam.image_encoder = torch.compile(converted)
    return network


__all__ = ["ROUTES", "compile_encoder", "pt2e_int8_encoder"]
