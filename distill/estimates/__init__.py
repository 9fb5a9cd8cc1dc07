"""What a run of the grid is expected to cost before it starts: GPU-hours, disk, downloads.

One place for the models a plan (`main -P plan=true`), bench/grid_walltime.py and the report's "estimated vs
actual" table read: `sizes` (parameter counts, download sizes), `throughput` (the stated speed assumptions),
`disk` (what SFT writes), `measured` (the rates earlier runs of the same model logged, which replace the
assumptions), `steps` (one estimate per step of the planner's grid) and `schedule` (the wall time of a
grid on N GPUs). Nothing here loads a model, asks the Hub or needs a GPU.
"""
