"""GPU execution settings that keep the math: cuDNN autotuning and optional torch.compile.

Neither changes what is computed, only how: cuDNN choosing its fastest algorithm per shape, and
compiled (fused) elementwise/normalisation kernels (measured one by one in BENCHMARKS.md). Nothing here
changes a torch-wide setting on import; the functions that do say so, and run only when called.
"""
from __future__ import annotations

import torch

from .attention import fa4_available
from .checkpoints import OfficialNetworks

# A compiled region runs once per distinct input shape: the denoising UNet's resnets come in ~20 (channels,
# size) combinations, each at the two window-batch sizes. Above the limit Dynamo would fall back to eager.
REGION_RECOMPILE_LIMIT = 128


def prepare_for_gpu(networks: OfficialNetworks, compile_networks: bool = False) -> OfficialNetworks:
    """cuDNN autotuning for the eager networks (`torch.backends.cudnn.benchmark`, process-wide: set here, on the
    caller's request); FlashAttention-4 for the attention shapes where it is faster, when the optional flash-attn-4
    package is installed (`attention.fa4_available`); optionally compile the denoising UNet's repeated blocks
    (`compile_regions`) and the VAE decoder. channels_last is not used: no gain for either UNet or the VAE."""
    # Compiled workers take cuDNN's heuristic choice: its timing of each new shape costs their warm start more
    # than it gains.
    torch.backends.cudnn.benchmark = not compile_networks
    if fa4_available():  # the optional flash-attn-4 package is installed (and ECHOMIMIC2_FA4 is not 0)
        use_fa4_attention(networks.denoising_unet)
        use_fa4_attention(networks.reference_unet)
    if compile_networks:
        # Fuses the norms, GEGLU, residual adds and layout copies between the cuBLAS/cuDNN calls; no CUDA graphs
        # (little gain for a large memory pool). The UNet by its repeated blocks (as fast as its whole forward,
        # less to compile and trace); the VAE decoder whole (one shape per job: decode_latents pads batches).
        compile_regions(networks.denoising_unet)
        # Without saved traces: torch cannot load the decoder's back (a guard on a default argument).
        networks.vae.decoder.forward = compile_function(networks.vae.decoder.forward, saved_traces=False)
    return networks


def use_fa4_attention(module: torch.nn.Module) -> int:
    """Route the spatial, reference and audio attention of `module` through `attention.fa4_or_sdpa` (FA4 for the
    shapes where it is faster, SDPA for the rest); the motion modules keep their own short-sequence attention.
    Returns how many attention layers now take that route."""
    from .attention import Attention, fa4_or_sdpa

    routed = 0
    for layer in module.modules():
        if isinstance(layer, Attention) and type(layer).weighted_values is Attention.weighted_values:
            layer.weighted_values = fa4_or_sdpa  # an instance attribute: called as a plain function, like the staticmethod
            routed += 1
    return routed


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules of `model` whose class it declares repeated (`_repeated_blocks`: class names, as in
    diffusers' `ModelMixin.compile_repeated_blocks`); ValueError when it declares none."""
    names = set(getattr(model, "_repeated_blocks", ()))
    if not names:
        raise ValueError(f"{type(model).__name__} declares no _repeated_blocks to compile")
    return [module for module in model.modules() if type(module).__name__ in names]


def compile_regions(model: torch.nn.Module, backend: str = "inductor") -> int:
    """Compile the repeated blocks `model` declares (`repeated_blocks`) instead of its whole forward: one compiled
    `forward` per block class, bound to each of its blocks, so blocks of one class and input shape share one graph
    (less to compile cold, less to trace warm). One compiled function per class, not `nn.Module.compile` per
    block: Dynamo's saved traces (`enable_saved_traces`) are keyed by the function, and compiled
    `Module._call_impl`s of one code object collide when their traces are loaded back. Bound per block, not
    set on the class: other networks (the reference UNet, the VAE) use the same classes eagerly.
    Raises Dynamo's recompile limit (process-wide) to REGION_RECOMPILE_LIMIT. Returns how many blocks were compiled."""
    import types

    regions = repeated_blocks(model)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, REGION_RECOMPILE_LIMIT)
    compiled: dict[type, object] = {}
    for module in regions:
        cls = type(module)
        if cls not in compiled:
            compiled[cls] = compile_function(cls.forward, backend=backend)
        module.forward = types.MethodType(compiled[cls], module)
    return len(regions)


def compile_function(fn, backend: str = "inductor", saved_traces: bool = True):
    """`torch.compile(fn)` with static shapes. A saved trace of `fn` is installed here, when it is compiled: if
    that fails (an experimental torch feature: a trace it cannot load back), `fn` is compiled without saved
    traces, as on a cold start, never failing the worker."""
    import contextlib
    import logging

    def without_saved_traces():
        off = (torch._dynamo.config.patch(caching_precompile=False)
               if hasattr(torch._dynamo.config, "caching_precompile") else contextlib.nullcontext())
        with off:
            return torch.compile(fn, backend=backend, dynamic=False)

    if not (saved_traces and getattr(torch._dynamo.config, "caching_precompile", False)):
        return without_saved_traces()
    try:
        return torch.compile(fn, backend=backend, dynamic=False)
    except Exception as exc:  # noqa: BLE001 - an unusable saved trace means tracing again, never a failed job
        logging.getLogger(__name__).warning("saved trace of %s not usable, tracing again: %r",
                                            getattr(fn, "__qualname__", fn), exc)
        return without_saved_traces()


def compiled_regions(module: torch.nn.Module) -> int:
    """How many submodules of `module` run a compiled `forward` (`compile_regions`)."""
    def compiled(m: torch.nn.Module) -> bool:
        bound = getattr(m.__dict__.get("forward"), "__func__", None)  # a forward bound on the instance
        return getattr(bound, "_torchdynamo_orig_callable", None) is not None

    return sum(compiled(m) for m in module.modules())


def enable_saved_traces() -> bool:
    """Have `compile_artifacts()` include Dynamo's traces and `load_compile_artifacts()` install them, so a warm
    process neither traces nor compiles (without them a warm start still traces every graph, although the
    kernels come from the cache). Process-wide (Dynamo's `caching_precompile`, an experimental torch feature);
    returns whether this torch has it. The traces it saves keep every guard on shapes, dtypes, devices and
    values, and drop identity guards (which object a name points to): fine here, the networks are never
    swapped inside a process."""
    import logging

    if not hasattr(torch._dynamo.config, "caching_precompile"):
        return False
    torch._dynamo.config.caching_precompile = True
    # It logs a warning per identity guard it drops (hundreds per graph): expected, not a problem to report.
    logging.getLogger("torch._dynamo.guards").setLevel(logging.ERROR)
    return True


def compile_cache_key() -> str:
    """Names the compiled-kernel cache a process can reuse: the same torch, CUDA and GPU model, or a
    cache from elsewhere would only be rejected (or, worse, half-used) by the compiler."""
    import re

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        device = f"sm{major}{minor}-{torch.cuda.get_device_name(0)}"
    else:
        device = "cpu"
    text = f"torch{torch.__version__}-cuda{torch.version.cuda}-{device}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def load_compile_artifacts(data: bytes) -> bool:
    """Pre-fill PyTorch's compile caches (inductor + AOT autograd) from `compile_artifacts()` bytes of an
    earlier process, so `torch.compile` finds its kernels instead of generating them (warm start).
    A corrupt or foreign cache is ignored: the networks then compile as if there were none. The traces in
    `data` are installed only after `enable_saved_traces()`."""
    try:
        return torch.compiler.load_cache_artifacts(data) is not None
    except Exception:  # noqa: BLE001 - any unusable cache means a cold compile, never a failed job
        return False


def compile_artifacts() -> bytes | None:
    """What this process compiled so far, as bytes for `load_compile_artifacts` (None: nothing compiled)."""
    saved = torch.compiler.save_cache_artifacts()
    return None if saved is None else saved[0]


def generated_kernel_graphs() -> int:
    """How much this process compiled that a saved cache did not hold: graphs whose kernels it generated
    (inductor cache misses) and compiled functions with no saved trace (with saved traces on). When it grows
    there is something new worth saving; a warm start that found everything leaves it unchanged (the decoder,
    traced by every process, does not count: it has no saved trace to add)."""
    from torch._dynamo.utils import counters

    untraced = counters["dynamo_cache"].get("dynamo_cache_miss", 0)
    return int(counters["inductor"].get("fxgraph_cache_miss", 0)) + int(untraced)


# --------------------------------------------------------------------------------------------------
# The opt-in fast mode: fp8 matmuls. Its numerics differ from the fp16 path, so it is never the default.

FLOAT8 = torch.float8_e4m3fn
FLOAT8_MAX = torch.finfo(FLOAT8).max  # 448: e4m3 has 3 mantissa bits, ~6 % relative rounding per element


def _rowwise_float8(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> fp8 (M, K) and the fp32 scale (M, 1) that maps each row's largest magnitude to FLOAT8_MAX."""
    scale = matrix.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FLOAT8_MAX
    return (matrix / scale).to(FLOAT8), scale


class Float8Linear(torch.nn.Module):
    """`nn.Linear` computed by `torch._scaled_mm` on fp8 operands with fp32 accumulation: the weight is
    quantised once per output channel, the input per row at each call, the result comes out in the input's
    dtype (the Hopper fp8 tensor cores run at twice the fp16 rate)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight, scale = _rowwise_float8(linear.weight.detach())
        self.register_buffer("weight_t", weight.t(), persistent=False)  # (K, N) column-major, as _scaled_mm wants
        self.register_buffer("scale_b", scale.t().contiguous(), persistent=False)  # (1, N)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        quantised, scale_a = _rowwise_float8(rows)
        out = torch._scaled_mm(quantised, self.weight_t, scale_a=scale_a, scale_b=self.scale_b, out_dtype=x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def use_float8_linears(module: torch.nn.Module) -> int:
    """Replace every `nn.Linear` of `module` whose sides fit the fp8 kernels (multiples of 16) by a
    `Float8Linear`; returns how many were replaced. Convolutions, norms and attention stay fp16."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
                setattr(parent, name, Float8Linear(child))
                replaced += 1
    return replaced
