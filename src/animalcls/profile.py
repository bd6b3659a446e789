"""Model cost: parameters, fvcore's multiply-adds (GMACs), the paper's GFLOPs, CPU latency.

The paper's "efficiency" is FLOPs = 2 x multiply-adds over convolution and linear layers, which is
what torch.utils.flop_counter.FlopCounterMode counts. fvcore counts multiply-adds (and batch-norm),
so its number is labelled GMACs, never FLOPs.
"""

from __future__ import annotations

import time
import warnings

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(model: nn.Module, input_size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    flops: int = counter.get_total_flops()
    return flops / 1e9


def gmacs_fvcore(model: nn.Module, input_size: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, torch.zeros(1, 3, input_size, input_size))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        macs: int = analysis.total()  # fvcore is untyped
        return macs / 1e9


def cpu_latency_ms(model: nn.Module, input_size: int, repeats: int = 5) -> float:
    """Median single-image forward time on this CPU, after one warm-up."""
    x = torch.zeros(1, 3, input_size, input_size)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000.0 * sorted(times)[len(times) // 2]


def profile_model(model: nn.Module, input_size: int, latency: bool = False) -> dict[str, float]:
    """All the cost numbers of a model at an input size; the model is put in eval mode, on the CPU."""
    was_training = model.training
    model = model.eval()
    stats = {
        "params": count_params(model),
        "gmacs_fvcore": gmacs_fvcore(model, input_size),
        "gflops": gflops(model, input_size),
    }
    if latency:
        stats["latency_ms"] = cpu_latency_ms(model, input_size)
    model.train(was_training)
    return stats
