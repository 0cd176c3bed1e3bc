"""Batched gradient matching (Geiping et al., NeurIPS 2020): many inversion problems in one run.

A problem (k images against one observed gradient, ATS "inversed" objective 1 - global cosine +
tv * TV(x)) keeps its own optimisation when P problems are stacked into one (P, k, C, H, W)
tensor: objectives are summed, Adam and sign are elementwise, cosine, TV and the stopping rule
(:mod:`~fedpriv.attacks.lr_schedule`: a stopped problem is frozen) per problem. Extra
per-problem parameters (a learned translation) join the same Adam unsigned and clamped.
Engines: ``loop`` (the sources' one-at-a-time autograd), ``loop-channels-last`` (the same on a
channels-last copy of the model: other CPU kernels, same arithmetic), ``grouped`` (per-problem model
copies as grouped convolutions), ``vmap`` (``torch.func``), ``auto`` (:func:`choose_engine`).
"""

from __future__ import annotations

import copy
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial, reduce

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fedpriv.attacks.block_cosine import block_cosine_loss
from fedpriv.attacks.grouped_model import grouped_copy
from fedpriv.attacks.heap_reuse import reused_heap
from fedpriv.attacks.lr_schedule import NO_STOPPING, ScheduledAdam, StoppingRule
from fedpriv.attacks.precision import check_precision, precision_scope
from fedpriv.errors import ConfigError

ENGINES = ("auto", "loop", "loop-channels-last", "grouped", "vmap")
LOOPS = ("loop", "loop-channels-last")
PROBE_MARGIN = 1.25  # auto batches only if the probe finds it this much faster: CPU timings vary ~20%
PROBE_PROBLEMS = 16  # most problems a probe step batches (bounds its memory); its time is scaled up
Matcher = Callable[[torch.Tensor], torch.Tensor]
_PROBE_CACHE: dict[tuple[object, ...], str] = {}


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV per problem of x (P, ..., H, W): mean |dx| + mean |dy| within each problem."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


@dataclass(frozen=True)
class MatchingProblem:
    """A start (k, C, H, W) in input space, k labels, the observed gradient (``parameters()`` order)."""

    init: torch.Tensor
    labels: torch.Tensor
    target: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ExtraParameters:
    """Per-problem parameters (P, ...) optimised unsigned with x, clamped to +-bound; ``apply`` -> model input."""

    init: torch.Tensor
    bound: torch.Tensor
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def rows(self, start: int, stop: int) -> ExtraParameters:
        """The parameters of problems ``start:stop``."""
        return ExtraParameters(self.init[start:stop], self.bound[start:stop], self.apply)


@dataclass(frozen=True)
class ProblemSolution:
    """One problem's last iterate (k, C, H, W), extras or ``None``, final objective, iterations run, engine."""

    images: torch.Tensor
    extra: torch.Tensor | None
    loss: float
    iterations_run: int
    engine: str


@dataclass(frozen=True)
class MatchingResult:
    """Last iterates (P, k, C, H, W), extras (P, ...) or ``None``, final objectives (P,), iterations
    run (P,), engines used."""

    images: torch.Tensor
    extra: torch.Tensor | None
    loss: torch.Tensor
    iterations_run: torch.Tensor
    engine: str

    def solutions(self) -> list[ProblemSolution]:
        """The result of each problem, in order."""
        return [ProblemSolution(self.images[j], None if self.extra is None else self.extra[j], float(self.loss[j]),
                                int(self.iterations_run[j]), self.engine) for j in range(len(self.images))]


def _flat_targets(problems: Sequence[MatchingProblem]) -> tuple[torch.Tensor, torch.Tensor]:
    """The target gradients as one (P, N) matrix, and their norms (P,)."""
    flat = torch.stack([torch.cat([t.reshape(-1) for t in p.target]) for p in problems])
    return flat, flat.pow(2).sum(1).sqrt()


def _cosine_loss(grads: torch.Tensor, flat: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """1 - cosine of flat gradients (..., N) with targets (..., N) of norms (...).

    Used under ``vmap``, where :func:`~fedpriv.attacks.block_cosine.block_cosine_loss` (a custom
    autograd Function) has no batching rule.
    """
    return 1 - (grads * flat).sum(-1) / (grads.pow(2).sum(-1).sqrt() * norm).clamp_min(1e-8)


def _block_targets(problems: Sequence[MatchingProblem]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The target gradients as one (P, n_i) matrix per parameter tensor, and their global norms (P,)."""
    blocks = [torch.stack([p.target[i] for p in problems]).flatten(1) for i in range(len(problems[0].target))]
    return blocks, reduce(operator.add, [torch.linalg.vector_norm(t, dim=1).square() for t in blocks]).sqrt()


def loop_matcher(model: nn.Module, problems: Sequence[MatchingProblem]) -> Matcher:
    """Whole-model autograd per problem with ``create_graph=True``: the sources' reference."""
    params = [p for p in model.parameters() if p.requires_grad]

    def match(inputs: torch.Tensor) -> torch.Tensor:
        losses = []
        for inp, problem in zip(inputs, problems, strict=True):
            grads = torch.autograd.grad(F.cross_entropy(model(inp), problem.labels), params, create_graph=True)
            dot = reduce(operator.add, [(g * t).sum() for g, t in zip(grads, problem.target, strict=True)])
            g_norm, t_norm = (reduce(operator.add, [(v * v).sum() for v in vs]) for vs in (grads, problem.target))
            losses.append(1 - dot / (g_norm.sqrt() * t_norm.sqrt()).clamp_min(1e-8))
        return torch.stack(losses)

    return match


def loop_model(engine: str, model: nn.Module) -> nn.Module:
    """The model a loop engine differentiates: ``model``, or for ``loop-channels-last`` a channels-last copy.

    At batch 1 PyTorch's CPU convolution heuristic sends small NCHW convolutions to its native
    im2col kernels, 2-4x slower on our CPU than the channels-last ones (benchmarks/RESULTS.md).
    """
    return copy.deepcopy(model).to(memory_format=torch.channels_last) if engine == "loop-channels-last" else model


def vmap_matcher(model: nn.Module, problems: Sequence[MatchingProblem]) -> Matcher:
    """Per-problem parameter gradients with ``torch.func.vmap`` over ``torch.func.grad``."""
    labels, (flat, norm) = torch.stack([p.labels for p in problems]), _flat_targets(problems)
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad} | dict(model.named_buffers())

    def one(inp: torch.Tensor, label: torch.Tensor, flat_p: torch.Tensor, norm_p: torch.Tensor) -> torch.Tensor:
        def ce(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return F.cross_entropy(functional_call(model, (params, fixed), (inp,)), label)

        grads = torch.func.grad(ce)(trainable)
        return _cosine_loss(torch.cat([grads[n].reshape(-1) for n in trainable]), flat_p, norm_p)

    return lambda inputs: vmap(one)(inputs, labels, flat, norm)


def grouped_matcher(model: nn.Module, problems: Sequence[MatchingProblem]) -> Matcher | None:
    """Per-problem model copies as grouped convolutions; ``None`` if the model is not covered.

    Covered: Conv2d (zero padding), eval BatchNorm2d, Linear, joined by parameter-free modules
    acting per channel; the copy is checked against the model on the problems' starts first.
    """
    if (built := grouped_copy(model, len(problems))) is None:
        return None
    replica, copies = built
    labels, (targets, norm) = torch.stack([p.labels for p in problems]), _block_targets(problems)

    def run(inputs: torch.Tensor) -> torch.Tensor:
        n, k = inputs.shape[:2]
        logits: torch.Tensor = replica(inputs.transpose(0, 1).reshape(k, -1, *inputs.shape[3:]))
        return logits.view(k, n, -1)

    init = torch.stack([p.init for p in problems])
    with torch.no_grad(), torch.autocast(init.device.type, enabled=False):
        try:
            grouped = run(init).transpose(0, 1)
            if not torch.allclose(grouped, model(init.flatten(0, 1)).view_as(grouped), rtol=1e-4, atol=1e-5):
                return None
        except RuntimeError:  # channels mixed outside the covered modules
            return None

    def match(inputs: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(run(inputs).permute(1, 2, 0), labels, reduction="none").mean(1)
        grads = torch.autograd.grad(loss.sum(), copies, create_graph=True)  # the per-problem gradients
        return block_cosine_loss([g.reshape(len(norm), -1) for g in grads], targets, norm)

    return match


def _objective(match: Matcher, x: torch.Tensor, values: torch.Tensor | None, extra: ExtraParameters | None,
               tv: float) -> torch.Tensor:
    return match(x if extra is None or values is None else extra.apply(x, values)) + tv * total_variation(x)


def optimize(match: Matcher, init: torch.Tensor, low: torch.Tensor, high: torch.Tensor, *, iterations: int,
             lr: float, tv: float, extra: ExtraParameters | None = None, rule: StoppingRule = NO_STOPPING,
             progress: int = 0, label: str = "gradient-matching") -> MatchingResult:
    """The ATS "inversed" loop for P problems at once: signed Adam on x, boxed after each step.

    Parameters
    ----------
    match
        Maps model inputs (P, k, C, H, W) to 1 - cosine per problem, differentiably.
    init, low, high
        Starting candidates (P, k, C, H, W); the per-channel box in input space, (C, 1, 1).
    iterations, lr, tv
        Steps, Adam learning rate (x0.1 at :func:`~fedpriv.attacks.lr_schedule.lr_milestones`) and TV weight.
    extra
        Optional per-problem extra parameters (unsigned, clamped after each step).
    rule
        When each problem's lr decays early and when it stops (:mod:`~fedpriv.attacks.lr_schedule`).
    progress, label
        Print ``[label]`` and the mean objective every ``progress`` iterations (0: never).
    """
    x = init.detach().clone().requires_grad_(True)
    values = None if extra is None else extra.init.detach().to(init).clone().requires_grad_(True)
    params = [x] if values is None else [x, values]
    adam = ScheduledAdam(params, lr, iterations, rule, len(init))
    for it in range(iterations):
        loss = _objective(match, x, values, extra, tv)
        adam.observe(it, loss)
        if adam.finished:
            break
        grads = torch.autograd.grad(loss.sum(), params)
        x.grad = grads[0].sign()
        if values is not None:
            values.grad = grads[1]
        adam.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, high), low))
            if values is not None and extra is not None:
                bound = extra.bound.to(values)
                values.copy_(torch.maximum(torch.minimum(values, bound), -bound))
        if progress and (it + 1) % progress == 0:
            print(f"[{label}] iteration {it + 1}/{iterations} loss {loss.mean().item():.4f}", flush=True)
    final = _objective(match, x, values, extra, tv).detach()
    return MatchingResult(x.detach(), None if values is None else values.detach(), final, adam.iterations_run, "")


def _step_seconds(match: Matcher, x: torch.Tensor, extra: ExtraParameters | None, tv: float) -> float:
    """Wall time of one objective-and-gradient evaluation, the bulk of an iteration."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda device: None)
    sync(x.device)
    start = time.perf_counter()
    x = x.clone().requires_grad_(True)
    values = None if extra is None else extra.init.to(x).clone().requires_grad_(True)
    torch.autograd.grad(_objective(match, x, values, extra, tv).sum(), [x] if values is None else [x, values])
    sync(x.device)
    return time.perf_counter() - start


def _probe(model: nn.Module, problems: Sequence[MatchingProblem], extra: ExtraParameters | None, tv: float,
           repeats: int) -> str:
    """The fastest engine for P problems, timing batched engines on at most :data:`PROBE_PROBLEMS`."""
    size = min(len(problems), PROBE_PROBLEMS)
    x, part = torch.stack([p.init for p in problems[:size]]), None if extra is None else extra.rows(0, size)
    found = {"grouped": grouped_matcher(model, problems[:size])}
    if (found["grouped"] is None or x.device.type != "cpu") and not torch.is_autocast_enabled(x.device.type):
        found["vmap"] = vmap_matcher(model, problems[:size])  # vmap's batch norm fails under bf16 autocast
    loop = partial(_step_seconds, loop_matcher(model, problems[:1]), x[:1], part and part.rows(0, 1), tv)
    steps = {"loop": (loop, float(len(problems)))}
    steps |= {name: (partial(_step_seconds, match, x, part, tv), PROBE_MARGIN * len(problems) / size)
              for name, match in found.items() if match is not None}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats + 1):  # interleaved: this CPU's speed drifts over seconds, so time the engines alike
        for name, (step, _scale) in steps.items():
            times[name].append(step())
    best = {name: scale * min(times[name]) for name, (_step, scale) in steps.items()}
    return min(best, key=best.__getitem__)


def choose_engine(model: nn.Module, problems: Sequence[MatchingProblem], extra: ExtraParameters | None,
                  tv: float, repeats: int = 3) -> tuple[str, Matcher | None]:
    """``auto``: the engine (and its matcher) that a timing probe finds fastest, cached per shape.

    Candidates: ``loop``, ``grouped``, and ``vmap`` off the CPU or where grouped does not cover the
    model (on CPU it never beat grouped in our measurements). One problem or a train-mode model
    keeps ``loop`` without a probe. ``loop-channels-last`` is never chosen: it is within ~1.4x of the
    loop, so a probe would pick either by noise, and the two agree only to rounding, which sign-Adam
    amplifies; the same configuration must give the same attack numbers. Batched engines must beat
    P loop steps by :data:`PROBE_MARGIN` (each the minimum of a few steps, the engines' steps
    interleaved; batched ones on at most :data:`PROBE_PROBLEMS` problems, scaled). Keyed by model,
    problem shape, dtype, device, extras and precision (the TF32 flag only on CUDA: on a CPU
    ``strict-fp32`` is ``default``, and the two share one probe).
    """
    first = next(model.parameters())
    key = (type(model).__name__, tuple(tuple(p.shape) for p in model.parameters()), len(problems),
           tuple(problems[0].init.shape), first.dtype, str(first.device), extra is not None,
           torch.is_autocast_enabled(first.device.type), first.is_cuda and torch.backends.cudnn.allow_tf32)
    if key not in _PROBE_CACHE:
        _PROBE_CACHE[key] = _probe(model, problems, extra, tv, repeats)
    return _batched_matcher(_PROBE_CACHE[key], model, problems, extra, tv)


def _batched_matcher(engine: str, model: nn.Module, problems: Sequence[MatchingProblem],
                     extra: ExtraParameters | None, tv: float) -> tuple[str, Matcher | None]:
    if engine == "auto" and (model.training or len(problems) == 1):
        return "loop", None
    if engine == "auto":
        return choose_engine(model, problems, extra, tv)
    if engine in LOOPS:
        return engine, None
    match = grouped_matcher(model, problems) if engine == "grouped" else vmap_matcher(model, problems)
    if match is None:
        raise ConfigError(f"engine 'grouped' covers Conv2d (zero padding), eval BatchNorm2d, Linear and "
                          f"parameter-free modules; {type(model).__name__} has others: use 'vmap' or 'loop'")
    return engine, match


def solve(model: nn.Module, problems: Sequence[MatchingProblem], low: torch.Tensor, high: torch.Tensor, *,
          iterations: int, lr: float, tv: float, extra: ExtraParameters | None = None, engine: str = "auto",
          max_batch: int = 64, precision: str = "default", rule: StoppingRule = NO_STOPPING, progress: int = 0,
          label: str = "gradient-matching") -> MatchingResult:
    """Solve independent problems (results in input order), batched where that is faster.

    Parameters
    ----------
    model
        The victim model; eval mode for the batched engines.
    problems
        The problems, all with the same k and image shape.
    low, high, iterations, lr, tv, extra, rule, progress, label
        As for :func:`optimize`; ``extra`` has leading dimension ``len(problems)``.
    engine
        One of :data:`ENGINES`.
    max_batch
        Most problems per optimisation; more are solved in consecutive chunks.
    precision
        One of :data:`~fedpriv.attacks.precision.PRECISIONS` (engine probe and optimisation).

    Raises
    ------
    ConfigError
        Unknown engine or precision, ``max_batch < 1``, batched engine on a train-mode model,
        uncovered model.
    """
    check_precision(precision)
    if engine not in ENGINES:
        raise ConfigError(f"unknown gradient-matching engine {engine!r}; valid engines: {', '.join(ENGINES)}")
    if max_batch < 1:
        raise ConfigError(f"gradient-matching max-batch must be >= 1, got {max_batch}")
    if engine == "vmap" and precision == "bf16":
        raise ConfigError("engine 'vmap' does not run in bf16 (torch.func's batch norm rejects mixed dtypes); "
                          "use engine 'grouped', 'loop' or 'auto'")
    if model.training and engine in ("grouped", "vmap"):
        raise ConfigError(f"engine {engine!r} needs the model in eval mode: train-mode batch norm couples the "
                          "problems of a batch; use engine 'loop' (or 'auto', which falls back to it)")
    results, used = [], []
    with reused_heap():  # batched engines' large per-problem blocks: no page faults per iteration
        for start in range(0, len(problems), max_batch):
            chunk = problems[start:start + max_batch]
            part = None if extra is None else extra.rows(start, start + len(chunk))
            init = torch.stack([p.init for p in chunk])
            with precision_scope(precision, init.device):
                name, match = _batched_matcher(engine, model, chunk, part, tv)
                differentiated = model if match is not None else loop_model(name, model)
                runs = [(match, init, part)] if match is not None else [
                    (loop_matcher(differentiated, [p]), init[i:i + 1], None if part is None else part.rows(i, i + 1))
                    for i, p in enumerate(chunk)
                ]
                results += [optimize(m, x, low, high, iterations=iterations, lr=lr, tv=tv, extra=e, rule=rule,
                                     progress=progress, label=label) for m, x, e in runs]
            used.append(name)
    values = [r.extra for r in results if r.extra is not None]
    return MatchingResult(torch.cat([r.images for r in results]), torch.cat(values) if values else None,
                          torch.cat([r.loss for r in results]), torch.cat([r.iterations_run for r in results]),
                          ",".join(dict.fromkeys(used)))
