"""The metric names a step's run carries for what it cost, beside what the plan expected of it.

Apart from distill.pipeline.step_time, which logs them, so that the report reads them without importing the
orchestration (whose imports would put every phase's code and data into the report's reuse key).
"""

WALL, GPUS, GPU_SECONDS = "wall_seconds", "gpus", "gpu_seconds"
ESTIMATED_WALL, ESTIMATED_GPU_SECONDS = "estimated_wall_seconds", "estimated_gpu_seconds"
