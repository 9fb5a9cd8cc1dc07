"""The wall time of a grid's steps on a number of GPUs, simulated from the planner's graph.

The sequential executor runs one step at a time; the Ray executor starts, in plan order, every step whose
inputs exist and whose GPUs are free (Ray's own scheduler may order them differently)."""

from __future__ import annotations

import heapq


def simulate(steps, durations: dict[str, float], gpus: int, sequential: bool) -> float | None:
    """Seconds until the last step ends; None when a step needs more GPUs than there are."""
    if any(s.gpus > gpus for s in steps):
        return None
    if sequential:
        return sum(durations[s.name] for s in steps)
    t, free, done, running, pending = 0.0, gpus, set(), [], list(steps)
    while pending or running:
        for s in list(pending):
            if all(d in done for d in s.needs) and s.gpus <= free:
                free -= s.gpus
                heapq.heappush(running, (t + durations[s.name], s.name, s.gpus))
                pending.remove(s)
        t, name, g = heapq.heappop(running)
        free += g
        done.add(name)
    return t
