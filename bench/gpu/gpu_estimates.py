"""Estimates for bench/gpu/gpu_check.py: peak memory by the README's formula, training FLOPs per token and
the dense bf16 peak of a GPU by its name (tests/test_gpu_check.py checks them against the README)."""

from __future__ import annotations

GB = 1e9
# Dense bf16 peak, from NVIDIA's data sheets (without sparsity), matched against torch.cuda.get_device_name().
PEAK_TFLOPS = (("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0),
               ("L40S", 362.0), ("A10G", 70.0))
CONTEXT_GB = 1.5  # CUDA context and workspace: outside torch's allocator, so not in max_memory_allocated


def sft_memory_estimate(n_params: float, hidden: int, layers: int, vocab: int, tokens: int,
                        checkpointing: bool) -> dict:
    """Peak memory of full-parameter SFT in GB, the README's formula: fp32 weights, gradients and AdamW
    moments (16 B per parameter); activations ~34 x hidden bytes per token per layer (Korthikanti et al.
    2022, attention scores not stored), with checkpointing one bf16 layer input per layer plus one layer
    recomputed; logits and their gradient ~10 B per token per vocabulary entry; the CUDA context."""
    act = (2 * hidden * tokens * layers + 34 * hidden * tokens) if checkpointing else 34 * hidden * tokens * layers
    parts = {"weights": 4 * n_params, "gradients": 4 * n_params, "adamw": 8 * n_params, "activations": act,
             "logits": 10 * tokens * vocab}
    out = {k: v / GB for k, v in parts.items()}
    out["allocated"] = sum(out.values())          # what torch.cuda.max_memory_allocated can see
    out["context"] = CONTEXT_GB
    out["peak"] = out["allocated"] + CONTEXT_GB
    return out


def generation_memory_estimate(n_params: float, layers: int, kv_heads: int, head_dim: int, vocab: int, batch: int,
                               seq: int) -> dict:
    """Greedy generation in bf16: the weights, the KV cache (keys and values, every layer, bf16), and the
    fp32 logits of the last position of the batch (a few copies: logits, processors, argmax)."""
    parts = {"weights": 2 * n_params, "kv_cache": 2 * layers * kv_heads * head_dim * 2 * batch * seq,
             "logits": 3 * 4 * batch * vocab}
    out = {k: v / GB for k, v in parts.items()}
    out["allocated"] = sum(out.values())
    out["context"] = CONTEXT_GB
    out["peak"] = out["allocated"] + CONTEXT_GB
    return out


def flops_per_token(n_matmul: float, layers: int, hidden: int, mean_seq: float) -> float:
    """Training FLOPs per token, forward and backward (PaLM appendix B)."""
    return 6 * n_matmul + 12 * layers * hidden * mean_seq


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS if k.lower() in name.lower()), None)
