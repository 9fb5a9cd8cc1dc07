"""Run an entry point under `accelerate launch` with FSDP on a CPU (tests/test_sft_multiprocess.py).

accelerate 1.15 turns `distributed_type: FSDP` on only for GPU-like devices (AcceleratorState keeps
MULTI_CPU and drops the FSDP plugin: the launch would silently train plain DDP). This wrapper lifts that
one check, the only GPU-bound seam: after AcceleratorState is set up with an FSDP plugin on MULTI_CPU, it
records FSDP as the distributed type, as accelerate does on GPUs. Everything after that is the real code:
torch's FSDP2 `fully_shard` over a CPU device mesh on gloo, accelerate's and the Trainer's FSDP paths,
and the full state dict gathered to rank 0 by `trainer.save_model()`.

    accelerate launch --config_file <fsdp yaml> tests/fsdp_on_cpu.py entrypoints/sft.py --teacher ...
"""

import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        print(f"[fsdp-on-cpu] rank {PartialState().process_index}: FSDP version {plugin.fsdp_version}, "
              f"state dict {plugin.state_dict_type}", file=sys.stderr, flush=True)


AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if __name__ == "__main__":
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
