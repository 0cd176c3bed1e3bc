"""Batched gradient matching (Geiping et al., NeurIPS 2020): many inversion problems in one run.

Each problem is one candidate batch of k images matched against one observed gradient with the
ATS "inversed" objective: 1 - global cosine over all trainable parameters + TV weight * TV(x).
Problems (targets x restarts) are stacked into one (P, k, C, H, W) tensor; the objectives are
summed, so every problem's gradient, sign, Adam moments, learning-rate schedule and box clamp
are exactly its own (Adam and sign are elementwise; cosine and TV are per problem). Optional
per-problem extra parameters (a learned translation) join the same Adam unsigned, are clamped
per problem after every step and map the candidate to the model input; TV stays on x.

Engines: ``loop`` (the sources' one-problem-at-a-time autograd loop), ``grouped`` (one model
copy per problem as grouped convolutions: the per-problem weight gradient is the gradient with
respect to the copies), ``vmap`` (``torch.func`` per-sample gradients) and ``auto`` (a cached
timing probe on the real problems picks the fastest of loop and grouped, or of loop and vmap
where grouped is unsupported). Batched engines need eval-mode batch norm.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fedpriv.errors import ConfigError

ENGINES = ("auto", "loop", "grouped", "vmap")
Matcher = Callable[[torch.Tensor], torch.Tensor]
_PROBE_CACHE: dict[tuple[object, ...], str] = {}


def lr_milestones(iterations: int) -> list[int]:
    """ATS/inversefed decay points: floors of iterations / 2.667, / 1.6, / 1.142."""
    return [int(iterations // 2.667), int(iterations // 1.6), int(iterations // 1.142)]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV per problem of (P, ...,  H, W): mean |dx| + mean |dy| over each problem."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


@dataclass(frozen=True)
class MatchingProblem:
    """One inversion problem.

    Attributes
    ----------
    init
        Starting candidate in the model's input space, shape (k, C, H, W).
    labels
        The k labels, shape (k,).
    target
        The observed gradient, one tensor per trainable parameter in ``model.parameters()`` order.
    """

    init: torch.Tensor
    labels: torch.Tensor
    target: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ExtraParameters:
    """Per-problem parameters optimised with x (unsigned gradient) and clamped to a box.

    Attributes
    ----------
    init
        Starting values, shape (P, *shape).
    bound
        Clamp after every step to [-bound, bound], same shape as ``init``.
    apply
        Maps (x (P, k, C, H, W), values (P, *shape)) to the model input (P, k, C, H, W).
    """

    init: torch.Tensor
    bound: torch.Tensor
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MatchingResult:
    """Last iterates of every problem.

    Attributes
    ----------
    images
        Candidates in input space, shape (P, k, C, H, W).
    extra
        Extra parameters (P, *shape), or ``None``.
    loss
        Final objective per problem, shape (P,).
    engine
        The engine that ran (``auto`` resolved).
    """

    images: torch.Tensor
    extra: torch.Tensor | None
    loss: torch.Tensor
    engine: str


def _cosine_loss(grads: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """1 - global cosine per problem; grads and targets are (P, ...) per parameter tensor."""
    dot = sum((g.reshape(len(g), -1) * t.reshape(len(t), -1)).sum(1) for g, t in zip(grads, targets))
    g_norm = sum(g.reshape(len(g), -1).pow(2).sum(1) for g in grads)
    t_norm = sum(t.reshape(len(t), -1).pow(2).sum(1) for t in targets)
    assert isinstance(dot, torch.Tensor) and isinstance(g_norm, torch.Tensor)
    return 1 - dot / (g_norm.sqrt() * torch.as_tensor(t_norm).sqrt()).clamp_min(1e-8)


def _stack(problems: Sequence[MatchingProblem]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    labels = torch.stack([p.labels for p in problems])
    return labels, [torch.stack(ts) for ts in zip(*(p.target for p in problems))]


def loop_matcher(model: nn.Module, problems: Sequence[MatchingProblem]) -> Matcher:
    """Whole-model autograd per problem, as the sources run it (``create_graph=True``)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def match(inputs: torch.Tensor) -> torch.Tensor:
        losses = []
        for inp, problem in zip(inputs, problems):
            loss = F.cross_entropy(model(inp), problem.labels)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            losses.append(_cosine_loss([g[None] for g in grads], [t[None] for t in problem.target]))
        return torch.cat(losses)

    return match


def vmap_matcher(model: nn.Module, problems: Sequence[MatchingProblem]) -> Matcher:
    """Per-problem parameter gradients with ``torch.func.vmap`` over ``torch.func.grad``."""
    labels, targets = _stack(problems)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def one(inp: torch.Tensor, label: torch.Tensor, *target: torch.Tensor) -> torch.Tensor:
        def ce(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return F.cross_entropy(functional_call(model, (params, fixed), (inp,)), label)

        grads = torch.func.grad(ce)(trainable)
        return _cosine_loss([grads[n][None] for n in names], [t[None] for t in target])[0]

    batched = vmap(one)
    return lambda inputs: batched(inputs, labels, *targets)


class _GroupedConv(torch.autograd.Function):
    """conv2d with per-problem weight copies as groups; a backward that stays cheap twice over.

    The input gradient is a transposed convolution and the weight gradient a weight-only
    ``convolution_backward``, two separate differentiable ops, so differentiating them again
    never reaches aten's per-group loop in ``_convolution_double_backward``. The weight gradient
    is only formed while a graph is being built (the matching pass); the pass back to x skips it.
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, groups):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[no-untyped-def]
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            extra = [
                x.shape[i + 2] - ((grad_out.shape[i + 2] - 1) * stride[i] - 2 * padding[i]
                                  + dilation[i] * (weight.shape[i + 2] - 1) + 1)
                for i in range(2)
            ]
            grad_x = F.conv_transpose2d(grad_out, weight, None, stride, padding, extra, groups, dilation)
        if ctx.needs_input_grad[1] and torch.is_grad_enabled():
            grad_w = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
                [False, True, False],
            )[1]
        return grad_x, grad_w, None, None, None, None


class _Copies(nn.Module):
    """A Conv2d, eval BatchNorm2d or Linear replicated per problem along the channel axis."""

    def __init__(self, module: nn.Module, problems: int) -> None:
        super().__init__()
        self.module, self.problems = module, problems
        self.copies = {
            name: p.detach().repeat(problems, *[1] * (p.dim() - 1)).requires_grad_(p.requires_grad)
            for name, p in module.named_parameters(recurse=False)
        }
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            self.shift = module.running_mean.repeat(problems)[:, None, None]
            self.scale = torch.rsqrt(module.running_var + module.eps).repeat(problems)[:, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, c = self.module, self.copies
        if isinstance(m, nn.Conv2d):
            assert isinstance(m.padding, tuple)
            y = _GroupedConv.apply(x, c["weight"], m.stride, m.padding, m.dilation, m.groups * self.problems)
            return y if "bias" not in c else y + c["bias"][:, None, None]
        if isinstance(m, nn.BatchNorm2d):
            y = (x - self.shift) * self.scale
            y = y * c["weight"][:, None, None] if "weight" in c else y
            return y + c["bias"][:, None, None] if "bias" in c else y
        k, n = x.shape[0], self.problems
        y = torch.bmm(x.view(k, n, -1).transpose(0, 1), c["weight"].view(n, -1, x.shape[1] // n).transpose(1, 2))
        y = y if "bias" not in c else y + c["bias"].view(n, 1, -1)
        return y.transpose(0, 1).reshape(k, -1)


def _grouped_copy(model: nn.Module, problems: int) -> tuple[nn.Module, list[torch.Tensor]] | None:
    """Swap every parametrised module for :class:`_Copies`; ``None`` when the model has others."""
    import copy

    owners: dict[int, torch.Tensor] = {}
    replica = copy.copy(model)
    replica._modules = dict(model._modules)

    def swap(parent: nn.Module) -> bool:
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if isinstance(child, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                if not _supported(child):
                    return False
                copies = _Copies(child, problems)
                owners.update({id(p): copies.copies[n] for n, p in child.named_parameters(recurse=False)})
                parent._modules[name] = copies
            elif any(True for _ in child.parameters(recurse=False)):
                return False
            else:
                clone = copy.copy(child)
                clone._modules = dict(child._modules)
                parent._modules[name] = clone
                if not swap(clone):
                    return False
        return True

    if any(True for _ in model.parameters(recurse=False)) or not swap(replica):
        return None
    trainable = [p for p in model.parameters() if p.requires_grad]
    if any(id(p) not in owners for p in trainable):
        return None
    return replica, [owners[id(p)] for p in trainable]


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    if isinstance(module, nn.BatchNorm2d):
        return not module.training and module.running_mean is not None
    return True


def grouped_matcher(model: nn.Module, problems: Sequence[MatchingProblem]) -> Matcher | None:
    """Per-problem weight copies as grouped convolutions; ``None`` if the model is unsupported.

    The copy is checked against the model on the problems' own starting points before use.
    """
    labels, targets = _stack(problems)
    built = _grouped_copy(model, len(problems))
    if built is None:
        return None
    replica, copies = built

    def run(inputs: torch.Tensor) -> torch.Tensor:
        n, k = inputs.shape[:2]
        return replica(inputs.transpose(0, 1).reshape(k, -1, *inputs.shape[3:])).view(k, n, -1)

    with torch.no_grad():
        init = torch.stack([p.init for p in problems])
        if not torch.allclose(run(init).transpose(0, 1), model(init.flatten(0, 1)).view(*init.shape[:2], -1),
                              rtol=1e-4, atol=1e-5):
            return None

    def match(inputs: torch.Tensor) -> torch.Tensor:
        logits = run(inputs)
        loss = F.cross_entropy(logits.permute(1, 2, 0), labels, reduction="none").mean(1)
        grads = torch.autograd.grad(loss.sum(), copies, create_graph=True)
        return _cosine_loss([g.view(len(problems), *t.shape[1:]) for g, t in zip(grads, targets)], targets)

    return match


def _objective(match: Matcher, x: torch.Tensor, extra: torch.Tensor | None,
               spec: ExtraParameters | None, tv: float) -> torch.Tensor:
    inputs = x if spec is None or extra is None else spec.apply(x, extra)
    return match(inputs) + tv * total_variation(x)


def optimize(match: Matcher, init: torch.Tensor, low: torch.Tensor, high: torch.Tensor, *,
             iterations: int, lr: float, tv: float, extra: ExtraParameters | None = None,
             progress: int = 0, label: str = "gradient-matching") -> MatchingResult:
    """Signed Adam on x (and unsigned on the extras), boxed; the ATS "inversed" loop for P problems.

    Parameters
    ----------
    match
        Maps model inputs (P, k, C, H, W) to 1 - cosine per problem, differentiably.
    init
        Starting candidates (P, k, C, H, W); low, high: per-channel box (C, 1, 1).
    iterations, lr, tv
        Steps, Adam learning rate (x0.1 at :func:`lr_milestones`) and TV weight.
    extra
        Optional per-problem extra parameters.
    progress
        Print the mean objective every this many iterations (0: never).
    label
        Prefix of progress lines.
    """
    x = init.clone().requires_grad_(True)
    params = [x]
    e = None
    if extra is not None:
        e = extra.init.clone().to(init).requires_grad_(True)
        params.append(e)
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, lr_milestones(iterations), 0.1)
    for it in range(iterations):
        loss = _objective(match, x, e, extra, tv)
        grads = torch.autograd.grad(loss.sum(), params)
        x.grad = grads[0].sign()
        if e is not None:
            e.grad = grads[1]
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, high), low))
            if e is not None and extra is not None:
                bound = extra.bound.to(e)
                e.copy_(torch.maximum(torch.minimum(e, bound), -bound))
        if progress and (it + 1) % progress == 0:
            print(f"[{label}] iteration {it + 1}/{iterations} loss {loss.mean().item():.4f}", flush=True)
    final = _objective(match, x, e, extra, tv).detach()
    return MatchingResult(x.detach(), None if e is None else e.detach(), final, "")


def _build(engine: str, model: nn.Module, problems: Sequence[MatchingProblem]) -> Matcher | None:
    if engine == "grouped":
        return grouped_matcher(model, problems)
    if engine == "vmap":
        return vmap_matcher(model, problems)
    return loop_matcher(model, problems)


def _step_seconds(match: Matcher, x: torch.Tensor, extra: ExtraParameters | None, tv: float) -> float:
    """Wall time of one objective-and-gradient evaluation (the cost of an iteration)."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    x = x.clone().requires_grad_(True)
    e = None if extra is None else extra.init.to(x).requires_grad_(True)
    loss = _objective(match, x, e, extra, tv)
    torch.autograd.grad(loss.sum(), [x] if e is None else [x, e])
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start


def choose_engine(model: nn.Module, problems: Sequence[MatchingProblem], extra: ExtraParameters | None,
                  tv: float, repeats: int = 3) -> tuple[str, Matcher | None]:
    """Time the loop against the batched engine on these problems; the fastest wins (cached).

    The batched candidate is ``grouped``, or ``vmap`` where the model has modules that grouped
    copies do not cover. The loop's cost is one problem's step times P. Returns the engine and,
    when it is batched, its matcher (to be reused).
    """
    x = torch.stack([p.init for p in problems])
    p0 = next(model.parameters())
    key = (type(model).__name__, tuple(tuple(p.shape) for p in model.parameters()), tuple(x.shape),
           p0.dtype, str(p0.device), extra is not None)
    cached = _PROBE_CACHE.get(key)
    if cached == "loop":
        return "loop", None
    batched = "grouped"
    match = grouped_matcher(model, problems)
    if match is None:
        batched, match = "vmap", vmap_matcher(model, problems)
    if cached is not None:
        return batched, match
    one = loop_matcher(model, problems[:1])
    sub = None if extra is None else ExtraParameters(extra.init[:1], extra.bound[:1], extra.apply)
    candidates: dict[str, tuple[Callable[[], float], float]] = {
        "loop": (lambda: _step_seconds(one, x[:1], sub, tv), float(len(problems))),
        batched: (lambda: _step_seconds(match, x, extra, tv), 1.0),
    }
    best = {name: float("inf") for name in candidates}
    for name, (step, _) in candidates.items():
        step()  # warm-up: allocator, oneDNN primitive caches
    for _ in range(repeats):  # interleaved, minimum: robust to other load on the machine
        for name, (step, scale) in candidates.items():
            best[name] = min(best[name], step() * scale)
    choice = min(best, key=best.__getitem__)
    _PROBE_CACHE[key] = choice
    return choice, (match if choice != "loop" else None)


def solve(model: nn.Module, problems: Sequence[MatchingProblem], low: torch.Tensor, high: torch.Tensor, *,
          iterations: int, lr: float, tv: float, extra: ExtraParameters | None = None, engine: str = "auto",
          max_batch: int = 64, progress: int = 0, label: str = "gradient-matching") -> MatchingResult:
    """Solve independent problems, batched where that is faster; each keeps its own optimisation.

    Parameters
    ----------
    model
        The victim model, in eval mode for the batched engines.
    problems
        The problems; all share k and the image shape.
    low, high
        Per-channel box in input space, shape (C, 1, 1).
    iterations, lr, tv
        Optimisation settings (see :func:`optimize`).
    extra
        Optional per-problem extra parameters, leading dimension ``len(problems)``.
    engine
        One of :data:`ENGINES`.
    max_batch
        Most problems per optimisation; more are solved in consecutive chunks.
    progress, label
        Progress printing (see :func:`optimize`).

    Returns
    -------
    MatchingResult
        Problems in input order; ``engine`` names the engines used, comma-separated.

    Raises
    ------
    ConfigError
        On an unknown engine, ``max_batch < 1``, a batched engine with a model in train mode, or
        ``grouped`` with a model it does not cover.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown gradient-matching engine {engine!r}; valid engines: {', '.join(ENGINES)}")
    if max_batch < 1:
        raise ConfigError(f"engine batch size (max-batch) must be >= 1, got {max_batch}")
    if model.training and engine in ("grouped", "vmap"):
        raise ConfigError(
            f"engine {engine!r} needs the model in eval mode: train-mode batch norm couples the "
            "problems of a batch; use engine 'loop' (or 'auto', which falls back to it)"
        )
    settings = dict(iterations=iterations, lr=lr, tv=tv, progress=progress, label=label)
    images, extras, losses, used = [], [], [], []
    for start in range(0, len(problems), max_batch):
        chunk = problems[start:start + max_batch]
        part = None if extra is None else ExtraParameters(
            extra.init[start:start + max_batch], extra.bound[start:start + max_batch], extra.apply)
        name, match = engine, None
        if engine == "auto":
            name = "loop" if model.training or len(chunk) == 1 else "auto"
            if name == "auto":
                name, match = choose_engine(model, chunk, part, tv)
        elif engine != "loop":
            match = _build(engine, model, chunk)
            if match is None:
                raise ConfigError(
                    f"engine 'grouped' covers models built from Conv2d (zero padding), eval BatchNorm2d, "
                    f"Linear and parameter-free modules; {type(model).__name__} has others: use 'vmap' or 'loop'"
                )
        init = torch.stack([p.init for p in chunk])
        if name == "loop":
            for i, problem in enumerate(chunk):
                sub = None if part is None else ExtraParameters(part.init[i:i + 1], part.bound[i:i + 1], part.apply)
                result = optimize(loop_matcher(model, [problem]), init[i:i + 1], low, high, extra=sub, **settings)
                images.append(result.images)
                extras.append(result.extra)
                losses.append(result.loss)
        else:
            assert match is not None
            result = optimize(match, init, low, high, extra=part, **settings)
            images.append(result.images)
            extras.append(result.extra)
            losses.append(result.loss)
        used.append(name)
    extra_out = None if extra is None else torch.cat([e for e in extras if e is not None])
    return MatchingResult(torch.cat(images), extra_out, torch.cat(losses), ",".join(dict.fromkeys(used)))
