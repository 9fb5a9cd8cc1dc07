"""One estimate per step of the planner's grid (distill.pipeline.planner): its GPUs, its wall time on them,
the disk it needs at its peak and the Hub weights it downloads first; each says what it rests on.

A step's GPU-seconds are its wall time x the GPUs it holds (0 for a step without GPUs). Its peak disk is its
model's weights on this disk (in the Hugging Face cache, or the logged model it evaluates) plus, for `sft`, the
most it holds at once in the artifact store (distill.estimates.disk); answers, predictions and tables are a few
MB and not counted. A download is counted once, at the first step that loads the model, and not at all when the
local Hugging Face cache holds the model already. Wall time is modelled for GPUs only
(distill.estimates.throughput): a step of a CPU preset, of the rehearsal or of a served model has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distill.estimates import disk, sizes, throughput
from distill.estimates.measured import Rate, Rates

# The questions of the data sets the presets name, when the grid does not limit them.
TRAIN_QUESTIONS = {"openai/gsm8k": 7473}
EVAL_QUESTIONS = {"gsm8k-ja": 1069, "mgsm-ja": 250}


@dataclass
class StepEstimate:
    gpus: int
    seconds: float | None            # wall time; None where not modelled
    disk_gb: float | None            # None: a model whose size is not known here
    download_gb: float = 0.0
    downloads: list[str] = field(default_factory=list)   # the Hub ids it downloads first
    basis: str = "assumed"           # or `measured: <metric> of run <id>`
    leaves_gb: float = 0.0           # what stays in the artifact store after it (sft: the logged model)
    passing_gb: float = 0.0          # what it holds there at its peak on top of that (sft: checkpoints)

    @property
    def gpu_seconds(self) -> float:
        return self.gpus * self.seconds if self.gpus and self.seconds else 0.0


@dataclass
class _Model:
    source: str          # Hub id (or another source the step names)
    n_params: int | None
    trained: bool        # an sft run's logged model (fp32, in the artifact store), not the Hub's weights
    keys: tuple[str, ...]  # where a measured rate of this model is filed (distill.estimates.measured)


def _model(step, by_name: dict, preset) -> _Model | None:
    """The model a generating or training step loads; None for a step that loads none."""
    from distill.config.models import resolve_model, resolve_role

    prm = step.params
    if step.phase == "translate":
        ref = preset.translator.model
        return _Model(ref, sizes.parameters(ref, local=False), False, (f"model:{ref}",))
    if step.phase in ("teacher", "sft"):
        name, role = (prm.teacher, "teacher") if step.phase == "teacher" else (prm.student, "student")
        ref = resolve_role(name, preset, role).source
        return _Model(ref, sizes.parameters(ref, local=False), False, (f"model:{ref}", f"student:{name}"))
    if step.phase == "evaluate":
        if prm.model:
            ref = resolve_model(prm.model, preset)
            return _Model(ref.source, sizes.parameters(ref.source, local=False), False,
                          (f"model:{ref.source}", f"student:{ref.name}"))
        student = by_name[step.inputs["model"][0]].params.student  # a trained student: its sft step's
        ref = resolve_role(student, preset, "student").source
        return _Model(ref, sizes.parameters(ref, local=False), True, (f"student:{student}", f"model:{ref}"))
    return None


def _questions(table: dict, name: str, limit: int | None) -> int | None:
    n = table.get(name)
    return min(n, limit) if n is not None and limit else limit or n


def _measured(rates: dict[str, Rate], keys) -> Rate | None:
    return next((rates[k] for k in keys if k in rates), None)


def _basis(rate: Rate | None) -> str:
    return f"measured: {rate.metric} {rate.per_second:,.0f} of run {rate.run_id[:8]}" if rate else "assumed"


def _seconds(step, model: _Model | None, grid, p, rates: Rates) -> tuple[float | None, str]:
    """The step's wall time on its GPUs and what it rests on."""
    preset = grid.preset
    if model is None:
        if preset.needs_gpu and not p.rehearsal:
            return throughput.CPU_STEP_SECONDS, "assumed"
        return None, "not modelled"
    if not step.gpus or model.n_params is None:
        return None, "not modelled"
    if step.phase == "sft":
        rate = rates.sft.get(step.params.student)
        per_second = rate.per_second if rate else throughput.sft_rate(model.n_params)
        examples = p.n or preset.select.n
        return throughput.sft_seconds(examples, float(preset.sft.num_train_epochs), per_second), _basis(rate)
    rate = _measured(rates.generation, model.keys)
    per_second = rate.per_second if rate else throughput.generation_rate(model.n_params, step.gpus)
    load = rate.load_seconds if rate and rate.load_seconds is not None else throughput.load_seconds(model.n_params)
    if step.phase == "evaluate":
        prompts, tokens = _questions(EVAL_QUESTIONS, preset.data.eval_set, grid.limit), throughput.TOKENS_PER_ANSWER
    else:
        limit = p.train_limit or preset.data.train_limit
        prompts = _questions(TRAIN_QUESTIONS, preset.data.train, limit)
        tokens = throughput.TOKENS_PER_TRANSLATION if step.phase == "translate" else throughput.TOKENS_PER_ANSWER
    if prompts is None:
        return None, "not modelled"
    return throughput.generation_seconds(prompts, tokens, per_second, load), _basis(rate)


def _disk(step, model: _Model | None, preset) -> float | None:
    if model is None:
        return 0.0
    if model.n_params is None:
        return None
    if model.trained:
        return disk.MODEL_BYTES * model.n_params / sizes.GB
    held = sizes.weights_gb(model.n_params)
    if step.phase == "sft":
        keep = getattr(step.params, "keep_checkpoints", "") or "last"
        held += disk.sft_step_gb(model.n_params, keep, float(preset.sft.num_train_epochs))
    return held


def estimate(steps, grid, p, rates: Rates | None = None, to_run: set[str] | None = None) -> dict[str, StepEstimate]:
    """Step name -> its estimate, for the grid `p` (main's parameters) resolved to `grid`. `to_run`: the steps
    that will run (the others are reused: they load nothing, so they download nothing); None: all of them."""
    rates = rates or Rates({}, {})
    by_name = {s.name: s for s in steps}
    hub = not p.rehearsal  # the rehearsal's stand-ins are built on this machine
    seen: set[str] = set()
    out = {}
    for s in steps:
        model = _model(s, by_name, grid.preset)
        seconds, basis = _seconds(s, model, grid, p, rates)
        est = StepEstimate(s.gpus, seconds, None if p.rehearsal and model else _disk(s, model, grid.preset),
                           basis=basis)
        if s.phase == "sft" and model.n_params is not None and not p.rehearsal:
            est.leaves_gb = disk.MODEL_BYTES * model.n_params / sizes.GB
            est.passing_gb = est.disk_gb - sizes.weights_gb(model.n_params) - est.leaves_gb
        runs = to_run is None or s.name in to_run
        if model is not None and not model.trained and hub and runs and sizes.is_hub_id(model.source) \
                and model.source not in seen:
            seen.add(model.source)
            if not sizes.in_local_cache(model.source):
                est.downloads = [model.source]
                est.download_gb = sizes.weights_gb(model.n_params) or 0.0
        out[s.name] = est
    return out
