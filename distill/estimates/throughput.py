"""How long a step takes on H100 80 GB GPUs (bf16): the ASSUMPTIONS a plan uses where no earlier run of the
same model logged a rate (distill.estimates.measured replaces them then).

No GPU was at hand when these were written, so they are not measurements:
- vLLM offline generation: GEN_TOKENS_PER_S output tokens/s for an 8B model on one H100 (Llama 3.1 8B BF16,
  third-party vLLM benchmarks collected at morphllm.com/vllm-benchmarks, 2026), scaled by 8B / parameters,
  x TP_EFFICIENCY x tensor-parallel size when split over GPUs, at most GEN_TOKENS_PER_S_MAX (small students are
  limited by the scheduler, not the weights); the model's load LOAD_SECONDS + LOAD_SECONDS_PER_GB a GB of bf16
  weights.
- Output tokens: TOKENS_PER_TRANSLATION per translation, TOKENS_PER_ANSWER per teacher or student answer (the
  paper's Fig. 3, order of magnitude).
- SFT: SFT_MFU model FLOPs utilisation of H100_BF16_TFLOPS, 6 N FLOPs a token x RECOMPUTE for gradient
  checkpointing (the presets' setting); SFT_TOKENS_PER_EXAMPLE tokens an example (prompt and answer);
  SFT_LOAD_SECONDS to load the student and log the model.
- select, tokens, report and errors: CPU_STEP_SECONDS each on CPU, no GPU (the judge is an API whose speed
  is not the GPUs').
"""

from __future__ import annotations

GEN_TOKENS_PER_S = 12_500
GEN_REFERENCE_PARAMS = 8e9
TP_EFFICIENCY = 0.8
GEN_TOKENS_PER_S_MAX = 30_000
LOAD_SECONDS = 30
LOAD_SECONDS_PER_GB = 2
TOKENS_PER_TRANSLATION = 200
TOKENS_PER_ANSWER = 300
SFT_MFU = 0.25
H100_BF16_TFLOPS = 989
RECOMPUTE = 4 / 3
SFT_TOKENS_PER_EXAMPLE = 400
SFT_LOAD_SECONDS = 60
CPU_STEP_SECONDS = 60


def generation_rate(n_params: float, tensor_parallel: int) -> float:
    """Assumed output tokens per second of vLLM for a model of `n_params` over `tensor_parallel` GPUs."""
    scale = TP_EFFICIENCY * tensor_parallel if tensor_parallel > 1 else 1
    return min(GEN_TOKENS_PER_S * GEN_REFERENCE_PARAMS / n_params * scale, GEN_TOKENS_PER_S_MAX)


def load_seconds(n_params: float) -> float:
    """Assumed seconds to load a model's bf16 weights (2 bytes a parameter) and start the engine."""
    return LOAD_SECONDS + LOAD_SECONDS_PER_GB * 2 * n_params / 1e9


def generation_seconds(prompts: int, tokens_each: float, rate: float, load: float) -> float:
    return load + prompts * tokens_each / rate


def sft_rate(n_params: float) -> float:
    """Assumed training tokens per second of full-parameter SFT on one H100."""
    return SFT_MFU * H100_BF16_TFLOPS * 1e12 / (6 * n_params * RECOMPUTE)


def sft_seconds(examples: int, epochs: float, rate: float, tokens_each: float = SFT_TOKENS_PER_EXAMPLE) -> float:
    return SFT_LOAD_SECONDS + examples * epochs * tokens_each / rate
