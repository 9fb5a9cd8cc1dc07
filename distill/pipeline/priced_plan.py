"""`main -P plan=true`: the steps it would run and those it reuses, each with its GPUs, expected GPU-hours,
peak disk and download, then the totals, and with `gpu_hour_price` a cost. Nothing runs, nothing is
downloaded, no GPU is needed; the numbers come from distill.estimates (each row says whether its time is
measured by an earlier run of the same model or assumed)."""

from __future__ import annotations

from distill.estimates.steps import StepEstimate

DASH = "—"


def _num(x: float | None, digits: int = 1) -> str:
    return DASH if x is None else f"{x:,.{digits}f}"


def _hours(e: StepEstimate) -> str:
    if not e.gpus:
        return "0"
    return DASH if e.seconds is None else f"{e.gpu_seconds / 3600:,.2f}"


def table(label: str, status, estimates: dict[str, StepEstimate], price: float | None) -> list[str]:
    """The plan: a header as the entry points print theirs, a row per step, then the totals and the sources."""
    todo = [x for x in status if x.reuse is None]
    out = [f"{label}: {len(status)} step{'s' if len(status) != 1 else ''}, {len(todo)} to run, "
           f"{len(status) - len(todo)} reused"]
    width = max(len(x.step.name) for x in status)
    head = f"  {'':<6} {'step':<{width}}  {'GPUs':>4}  {'GPU-h':>7}  {'disk GB':>8}  {'download GB':>11}"
    out.append(head + (f"  {'cost':>9}" if price is not None else "") + "  basis")
    for x in status:
        e = estimates[x.step.name]
        if x.reuse:  # loads nothing, downloads nothing, holds no GPU
            row = f"  reuse  {x.step.name:<{width}}  {e.gpus:>4}  {'0':>7}  {'0':>8}  {'0':>11}"
            out.append(row + (f"  {0:>9.2f}" if price is not None else "") + f"  run {x.reuse}")
            continue
        row = (f"  run    {x.step.name:<{width}}  {e.gpus:>4}  {_hours(e):>7}  {_num(e.disk_gb):>8}  "
               f"{_num(e.download_gb) if e.download_gb else '0':>11}")
        if price is not None:
            row += f"  {_num(e.gpu_seconds / 3600 * price if _hours(e) != DASH else None, 2):>9}"
        out.append(row + f"  {e.basis}")
    return out + totals([estimates[x.step.name] for x in todo], price)


def totals(todo: list[StepEstimate], price: float | None) -> list[str]:
    """What the steps to run add up to; a step whose time or size is not modelled is named as missing from it."""
    gpu_h = sum(e.gpu_seconds for e in todo) / 3600
    unknown_h = sum(1 for e in todo if e.gpus and e.seconds is None)
    timed = [e.seconds for e in todo if e.seconds is not None]
    downloads = [m for e in todo for m in e.downloads]
    download = sum(e.download_gb for e in todo)
    disk = [e for e in todo if e.disk_gb is not None]
    peak = download + sum(e.leaves_gb for e in todo) + max((e.passing_gb for e in todo), default=0.0)
    measured = sum(e.basis.startswith("measured") for e in todo)
    lines = [f"totals: {len(todo)} steps to run, at most {max((e.gpus for e in todo), default=0)} GPUs at once: "
             f"{gpu_h:,.2f} GPU-hours" + (f" ({unknown_h} GPU steps not estimated: their model's size is unknown "
                                          "here)" if unknown_h else "")
             + (f"; {sum(timed) / 3600:,.1f} h one step at a time" if timed and gpu_h else "")]
    if price is not None:
        lines.append(f"  cost: {gpu_h * price:,.2f} ({gpu_h:,.2f} GPU-hours x {price:g} a GPU-hour)")
    lines.append(f"  download: {download:,.1f} GB of weights from the Hugging Face Hub ({len(downloads)} models)")
    if disk or not todo:
        lines.append(f"  disk: at most {peak:,.1f} GB more on one machine (every download, every logged student, "
                     "one SFT run's checkpoints at once)" + (f"; {len(todo) - len(disk)} steps' sizes not known here"
                                                             if len(disk) < len(todo) else ""))
    assumed = sum(e.basis == "assumed" for e in todo)
    lines.append(f"  basis: {measured} of {len(todo)} steps timed by an earlier run's measured rate, {assumed} by the "
                 "assumptions for H100 80 GB (distill/estimates/throughput.py), "
                 f"{len(todo) - measured - assumed} not modelled (on CPU, or a model of unknown size); sizes from the "
                 "models' published parameter counts, bf16 downloads (distill/estimates/sizes.py), SFT checkpoints "
                 "(distill/estimates/disk.py)")
    return lines
