"""Expand a suite into runs and execute them: fit -> checks -> attacks -> worst case -> report.

One run is (task, model, defense). Within a run, attacks go cheap-first in the
order the suite lists them; each attack spends effort only on samples that are
still standing at its eps. The worst case is per sample across every attack.
"""

from __future__ import annotations

import datetime as _dt
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import checks as checks_module
from .attack import Attack, AttackResult
from .checkpoint import CheckpointStore, chunk_seed, merge_results
from .defense import Defense, FittedDefense
from .errors import UserError
from .options import PluginSpec, build
from .registry import ATTACKS, DEFENSES, TASKS
from .records import AttackRecord, RunRecord, bits
from .report import Report, environment
from .runtime import RuntimeOptions
from .section import SECTIONS, get_section
from .suite import MODES, Suite
from .targets import ClassifierTarget
from .task import ClassificationTask
from .threat_model import check_norm, validate_eps, whole_box_eps
from .worst_case import copy as copy_worst
from .worst_case import fold_into, worst_case


@dataclass(frozen=True)
class PreparedAttack:
    """An attack built from its spec, with the runner-level options split off."""

    spec: PluginSpec
    attack: Attack
    n: int | None
    mode: str
    #: The eps values this attack runs at (None: every eps of its threat model in the suite).
    eps: list[float] | None = None


def prepare_attack(spec: PluginSpec, seed: int, batch_size: int, progress: bool) -> PreparedAttack:
    factory = ATTACKS.get(spec.name).factory
    options = dict(spec.options)
    n = options.pop("n", None)
    mode = str(options.pop("mode", "adaptive"))
    eps_option = options.pop("eps", None)
    eps = validate_eps(eps_option) if eps_option is not None else None  # eps=8/255+16/255
    if mode not in MODES:
        raise UserError(f"attack {spec.label()}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if n is not None:
        try:
            n = int(n)
        except ValueError:
            raise UserError(f"attack {spec.label()}: n must be an integer, got {n!r}") from None
        if n < 1:
            raise UserError(f"attack {spec.label()}: n must be >= 1")
    options.setdefault("seed", seed)
    options.setdefault("batch_size", batch_size)
    options.setdefault("progress", progress)
    attack = build(factory, options, owner=f"attack {spec.name}")
    return PreparedAttack(spec, attack, n, mode, eps)


def prepare_defense(spec: PluginSpec, seed: int) -> Defense | None:
    if spec.name == "none":
        return None
    options = dict(spec.options)
    options.setdefault("seed", seed)
    return build(DEFENSES.get(spec.name).factory, options, owner=f"defense {spec.name}")


def resolve_eps(suite: Suite, task: ClassificationTask) -> dict[str, list[float]]:
    """The suite's eps (else the task's defaults), keyed by canonical threat model names."""
    eps = suite.eps or task.default_eps
    return {check_norm(norm): validate_eps(values) for norm, values in eps.items()}


def whole_box_warnings(eps: dict[str, list[float]], attacks: list[PreparedAttack], input_shape: tuple[int, ...]) -> list[str]:
    """One line per eps the run will use that allows every image of the [0,1] box."""
    norms = {p.attack.norm for p in attacks if p.eps is None}  # an attack with eps=... uses only its own
    used = {(norm, e) for norm, values in eps.items() if norm in norms for e in values}
    used |= {(p.attack.norm, e) for p in attacks for e in (p.eps or [])}
    return [text for norm, e in sorted(used) if (text := whole_box_eps(norm, e, input_shape))]


def _shape(shape: tuple[int, ...]) -> str:
    return "(N, " + ", ".join(map(str, shape)) + ")"


def input_mismatch(target: ClassifierTarget, task: ClassificationTask, error: Exception) -> UserError:
    """The one-line error of a model that fails on the task's images: the shape it received,
    what its first layer expects where it says, and torch's own words (not its traceback)."""
    from torch import nn

    x = task.x_test[:2].to(target.device)
    received = tuple(task.input_shape)
    try:
        with torch.no_grad():
            inner = tuple(target.preprocess(x).shape[1:])  # what the network proper receives
    except Exception:  # noqa: BLE001 - the preprocessing itself failed: the task's shape is what was received
        inner = received
    via = "" if inner == received else f", {_shape(inner)} after the target's preprocessing"
    expects = ""
    first = next((m for m in target.model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))), None)
    if isinstance(first, nn.Linear) and first.in_features != math.prod(inner):
        expects = f"; its first layer (Linear) expects {first.in_features} input features, the images have {math.prod(inner)}"
    elif isinstance(first, nn.modules.conv._ConvNd) and len(inner) >= 1 and first.in_channels != inner[0]:
        expects = f"; its first layer ({type(first).__name__}) expects {first.in_channels} input channels, the images have {inner[0]}"
    said = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return UserError(f"model {target.name} cannot take the images of task {task.name}: it received shape {_shape(received)}{via}{expects} "
                     f"(torch: {said}); pass a model for images of shape {_shape(received)}, or another task")


def load_task(name: str, options: dict[str, Any] | None = None) -> ClassificationTask:
    return build(TASKS.get(name).factory, dict(options or {}), owner=f"task {name}")


def with_gradient_variant(result: AttackResult, variant: str, other: AttackResult) -> AttackResult:
    """One result from the same attack crafted through two gradients of one pipeline: per
    sample, broken if either run broke it; both accuracies are kept in the details."""
    from dataclasses import replace

    variants = dict(result.details.get("gradient_variants") or {"default": result.robust_accuracy})
    variants[variant] = other.robust_accuracy
    return replace(
        result,
        correct=result.correct & other.correct,
        x_adv=[],
        seconds=result.seconds + other.seconds,
        details={**result.details, "gradient_variants": variants},
        invalid=[{k: a[k] + b.get(k, 0) for k in a} for a, b in zip(result.invalid, other.invalid)],
    )


def _python_warning(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=4)


class Runner:
    """Executes a suite; ``progress`` shows bars; ``log`` receives one-line status messages and
    ``warn`` one-line warnings (default: Python's ``warnings``; ``eval`` prints ``warning: ...``),
    which the report also keeps (``suite.warnings``). ``options`` say how the run executes
    (device, threads, fitting precision, memory layout); ``device`` alone is a shorthand."""

    def __init__(
        self,
        suite: Suite,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
        device: str | None = None,
        checkpoint_dir: str | None = None,
        options: RuntimeOptions | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if options is not None and device is not None and device != options.device:
            raise TypeError(f"Runner: device={device!r} and options.device={options.device!r} disagree; pass one")
        self.suite = suite
        self.options = options if options is not None else RuntimeOptions(device=device or "cpu")
        self.store = CheckpointStore(checkpoint_dir)
        self.progress = progress
        self.log = log or (lambda message: None)
        self._warn = warn or _python_warning
        self.device = self.options.device
        #: The warnings of the last run, in order (also in the report's ``suite.warnings``).
        self.warnings: list[str] = []
        #: Whether a defense fitted under (or keyed its cache by) ``options.amp`` in the last run.
        self.fit_amp_applied = False
        self._targets: dict[tuple, ClassifierTarget] = {}

    def warn(self, message: str) -> None:
        """A one-line warning: said now, and kept for the report."""
        self.warnings.append(message)
        self._warn(message)

    def base_target(self, model: Any, task: ClassificationTask) -> ClassifierTarget:
        """The bare target of ``model`` (a spec or an ``nn.Module``) for ``task``, loaded once per run.

        A spec is loaded for the task (:func:`~.models.hub.load_for_task`): every family
        gets the task's class names and pixel size where its loader takes them, so the
        target takes the task's images and resizes them to the network's own size inside.
        """
        from .models.hub import load_for_task
        from .targets import as_classifier_target

        key = (model, task.name, tuple(task.input_shape), tuple(task.class_names)) if isinstance(model, str) else None
        if not isinstance(model, str):
            target = as_classifier_target(model, task.n_classes, task.input_shape, name=type(model).__name__)
        elif key in self._targets:
            return self._targets[key]
        else:
            target = load_for_task(model, task)
        target = target.to(self.device).eval()
        if target.n_classes != task.n_classes:
            raise UserError(f"model {target.name} has {target.n_classes} classes but task {task.name} has {task.n_classes}")
        if tuple(target.input_shape) != tuple(task.input_shape):
            raise UserError(f"model {target.name} expects inputs of shape {_shape(target.input_shape)} but task {task.name} gives {_shape(task.input_shape)}; "
                            "use a task with images of the model's shape, or a model for the task's")
        target.check_input(task.x_test[:2])
        try:
            target.logits(task.x_test[:2])
        except (torch.OutOfMemoryError, MemoryError):
            raise
        except RuntimeError as exc:  # e.g. a Linear sized for other images: torch's shape error, without its traceback
            raise input_mismatch(target, task, exc) from None
        target.validate_outputs(task.x_test[:16])
        if key is not None:
            self._targets[key] = target
        return target

    def run(self) -> Report:
        """Run the suite under :attr:`options`: threads and fitting precision hold for this run only."""
        from .precision import fit_precision
        from .threads import torch_threads

        self.warnings = []
        with torch_threads(self.options.threads or 0), fit_precision(self.options.amp) as precision:
            try:
                return self._run()
            finally:
                self.fit_amp_applied = precision.applied

    def _run(self) -> Report:
        suite = self.suite
        torch.manual_seed(suite.seed)
        task = load_task(suite.task, suite.task_options)
        eps = resolve_eps(suite, task)
        unknown = [name for name in suite.sections if name not in SECTIONS]
        if unknown:
            raise UserError(f"unknown report section(s) {', '.join(unknown)}; known: {', '.join(e.name for e in SECTIONS) or 'none'}")
        sections = {name: get_section(name) for name in suite.sections}
        for section in sections.values():
            section.check(suite)
        attacks = [prepare_attack(spec, suite.seed, suite.batch_size, self.progress) for spec in suite.attacks]
        for prepared in attacks:
            prepared.attack.prepare(task)
        for prepared in attacks:
            if prepared.eps is None and prepared.attack.norm not in eps:
                raise UserError(f"attack {prepared.spec.label()} uses {prepared.attack.norm} but no eps is set for it; pass --eps {prepared.attack.norm}:VALUES")
        if suite.models:
            for text in whole_box_warnings(eps, attacks, tuple(task.input_shape)):
                self.warn(text)
        defenses = [(spec, prepare_defense(spec, suite.seed)) for spec in suite.defenses]
        self.store.save_suite(suite.to_json())
        runs = []
        for m, model in enumerate(suite.models):
            base = self.base_target(model, task)
            for d, (spec, defense) in enumerate(defenses):
                runs.append(self.run_one(f"m{m}-d{d}", task, base, spec, defense, attacks, eps))
        data, files = {}, {}
        for name, section in sections.items():
            self.log(f"section {name}")
            result = section.run(suite, self)
            data[name] = result.data
            files.update(result.files)
        return Report(
            runs=runs,
            environment=environment(suite.seed, self.device),
            suite={**suite.to_json(), **({"warnings": list(self.warnings)} if self.warnings else {})},
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            sections=data,
            files=files,
        )

    def run_attack(self, key: str, prepared: PreparedAttack, target: ClassifierTarget, x: torch.Tensor, y: torch.Tensor, eps: list[float], craft: ClassifierTarget | None, same_function: bool = False) -> AttackResult:
        """Run one attack over fixed chunks, each seeded by its index and checkpointed.

        Under torch.distributed each rank computes its own chunks (see
        :mod:`.distributed`) and every rank gets all of them back in chunk order."""
        from dataclasses import replace

        from . import distributed
        from .precision import memory_format

        attack, chunk = prepared.attack, self.suite.chunk_size
        shard = distributed.current()
        target = memory_format(target, self.options.channels_last)
        craft = memory_format(craft, self.options.channels_last) if craft is not None else None
        chunks: dict[int, AttackResult] = {}
        starts = range(0, len(y), chunk)
        if len(starts) < shard.world_size:
            self.log(f"warning: {len(y)} samples make {len(starts)} chunk(s) of {chunk} for {shard.world_size} ranks; "
                     f"{shard.world_size - len(starts)} rank(s) idle on this attack (lower --chunk-size)")
        for c, start in enumerate(starts):
            if not shard.owns(c):
                continue
            result = self.store.load_chunk(f"{key}-c{c}")
            if result is None:
                seed = chunk_seed(attack.seed, c)  # the spec's seed, else the suite's
                result = attack(target, x[start : start + chunk], y[start : start + chunk], eps, craft_target=craft, same_function=same_function, seed=seed)
                self.store.save_chunk(f"{key}-c{c}", result)
            chunks[c] = result
        return merge_results(distributed.gather_chunks(chunks, len(starts), strip=lambda r: replace(r, x_adv=[])), seed=self.suite.seed)

    def run_one(self, key, task, base, spec, defense, attacks, eps) -> RunRecord:
        label = f"{base.name} / {spec.label()}"
        fitted: FittedDefense | None = None
        target = base
        if defense is not None:
            self.log(f"fitting {spec.label()} on {base.name}")
            fitted = defense.fit(base, task)
            target = fitted.target.to(self.device).eval()
        x, y = task.test_subset(self.suite.n)
        clean_correct = target.predict(x, self.suite.batch_size) == y
        checks = checks_module.run_pre_checks(target, x, y) if self.suite.checks else []
        nothing = checks_module.nothing_to_attack(clean_correct)  # with or without --no-checks
        if nothing is not None:
            self.warn(f"{label}: {nothing.detail}")
            checks.append(nothing)
        results: list[AttackResult] = []
        records = []
        for a, prepared in enumerate(attacks):
            if prepared.mode == "nonadaptive" and fitted is None:
                continue  # without a defense, non-adaptive is the same attack as adaptive
            n_attack = min(len(y), prepared.n or len(y))
            self.log(f"{label}: {prepared.spec.label()} on {n_attack} samples")
            craft = fitted.base if (prepared.mode == "nonadaptive" and fitted is not None) else None
            attack_eps = prepared.eps or eps[prepared.attack.norm]
            result = self.run_attack(f"{key}-a{a}", prepared, target, x[:n_attack], y[:n_attack], attack_eps, craft)
            if craft is None and prepared.attack.kind == "white-box":
                for v, (variant_name, variant) in enumerate(target.gradient_variants(prepared.attack.norm).items()):
                    self.log(f"{label}: {prepared.spec.label()} again through the {variant_name} gradient")
                    other = self.run_attack(f"{key}-a{a}-v{v}", prepared, target, x[:n_attack], y[:n_attack], attack_eps, variant, same_function=True)
                    result = with_gradient_variant(result, variant_name, other)
            results.append(result)
            records += [AttackRecord.from_result(result, i, n_attack) for i in range(len(result.eps))]
        worst = worst_case(results, len(y))
        check_records, lowered = [], []
        if self.suite.checks:
            white_box = [p.attack for p in attacks if p.mode == "adaptive" and p.attack.kind == "white-box"]
            ctx = checks_module.RunContext(target, x, y, clean_correct, results, eps, self.suite.seed, copy_worst(worst), base=fitted.base if fitted is not None else None, white_box=white_box)
            checks += checks_module.run_post_checks(ctx)
            before = copy_worst(worst)
            fold_into(worst, ctx.extra, len(y), only=list(worst), source="check ")
            check_records = [AttackRecord.from_result(r, i, len(r.correct[i])) for r in ctx.extra for i in range(len(r.eps))]
            lowered = [
                {"threat_model": k[0], "eps": k[1], "from": before[k].robust_accuracy, "to": w.robust_accuracy, "n": w.n}
                for k, w in sorted(worst.items()) if w.robust_accuracy < before[k].robust_accuracy - 1e-12
            ]
            for low in lowered:
                self.log(f"{label}: the checks' own attacks lowered the worst case at {low['threat_model']} eps={low['eps']:g} "
                         f"from {100 * low['from']:.1f}% to {100 * low['to']:.1f}% (n={low['n']})")
        failed = [c for c in checks if not c.passed]
        return RunRecord(
            task=task.name,
            model={"spec": base.name, "sha256": base.weights_sha256(), "parameters": sum(p.numel() for p in base.parameters())},
            defense=defense.record(fitted) if defense is not None and fitted is not None else None,
            n=len(y),
            clean_accuracy=float(clean_correct.float().mean()),
            clean_correct=bits(clean_correct.tolist()),
            attacks=records,
            check_attacks=check_records,
            worst_case=[w.record() for _, w in sorted(worst.items())],
            lowered_by_checks=lowered,
            checks=[c.to_json() for c in checks],
            reliable=not failed,
            unreliable_reasons=[f"{c.name}: {c.detail}" for c in failed],
        )
