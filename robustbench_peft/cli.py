"""Command line: ``python -m robustbench_peft {eval,list,...}``.

Every user error ends as one ``error:`` line on stderr and exit code 2, with no
traceback; reports already on disk are never damaged.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import UserError

DEFAULT_RUNS_DIR = Path("reports") / "runs"
#: Subcommands contributed by other modules: name -> (help, add_arguments, handler).
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


#: Modules that contribute subcommands with :func:`subcommand` (imported when the parser is built).
COMMAND_MODULES = (
    "robustbench_peft.claims",
    "robustbench_peft.leaderboard",
    "robustbench_peft.submission",
)


def load_command_modules() -> None:
    """Import the modules that register subcommands; a module not present is skipped."""
    import importlib

    for module in COMMAND_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def subcommand(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def decorate(handler: Callable[[argparse.Namespace], int]):
        SUBCOMMANDS[name] = (help, add_arguments, handler)
        return handler

    return decorate


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but errors become :class:`UserError` (one line, exit code 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see --help)")


def parse_eps(values: Sequence[str] | None) -> dict[str, list[float]] | None:
    """``--eps 0.1,0.2`` / ``--eps 8/255`` (every threat model, key ``*``) and ``--eps L2:0.5,1`` /
    ``--eps linf:8/255`` (one threat model), repeatable; the text is read by
    :func:`~robustbench_peft.threat_model.parse_eps_text`, as ``evaluate(eps="...")`` reads it."""
    if not values:
        return None
    from .threat_model import parse_eps_text

    eps: dict[str, list[float]] = {}
    for value in values:
        eps.update(parse_eps_text(value))
    return eps


def parse_device(text: str) -> str:
    """A torch device this machine has, else a one-line error (see :func:`.runtime.check_device`); imported
    here, not at the top, so that parsing the command line does not load torch."""
    from .runtime import check_device

    return check_device(text)


def resolve_out_dir(out: str | None, suite: str, force: bool) -> Path:
    """The output folder: must be new (or --force), and writable, before any work starts."""
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = DEFAULT_RUNS_DIR / f"{suite}-{stamp}"
    else:
        path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"output path {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UserError(f"output directory {path} already holds files; pass --force to overwrite, or choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to output directory {path}: {exc.strerror or exc}") from None
    return path


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default="digits", help="named suite to start from (default: digits)")
    p.add_argument("--task", help="task NAME[:k=v,...], e.g. digits, cifar10 or imagefolder:image_size=32,train_dir=DIR (options as the task's factory takes them)")
    p.add_argument("--data-dir", help="data directory of the task (cifar10, cifar100, imagefolder)")
    p.add_argument("--model", action="append", help="model spec FAMILY:NAME (repeatable), e.g. digits:cnn")
    p.add_argument("--attack", action="append", help="attack NAME[:k=v,...] (repeatable), e.g. pgd:norm=L2,steps=50; every attack also takes n=K, eps=A+B, mode=nonadaptive and amp=bf16")
    p.add_argument("--defense", action="append", help="defense NAME[:k=v,...] (repeatable); 'none' for the bare model")
    p.add_argument("--eps", action="append", help="eps list: '0.1,0.2' for every threat model or 'L2:0.5,1' for one (repeatable)")
    p.add_argument("--n", "--num-examples", dest="n", type=int, help="number of test examples (the first n, deterministic); under torchrun spell it --num-examples")
    p.add_argument("--seed", type=int, help="seed of every random choice (default 0)")
    p.add_argument("--batch-size", type=int, help="samples per attack batch")
    p.add_argument("--chunk-size", type=int, help="samples per checkpointed, separately seeded chunk, the unit torchrun ranks share (default 1024); numbers depend on it")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a report section's setting (repeatable; VALUE is JSON when it parses), e.g. diffusion.task=sd-object or unlearning.preset=full")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); 1 is often fastest for tiny models on a busy machine")
    p.add_argument("--no-checks", action="store_true", help="skip the evaluation sanity checks")
    p.add_argument("--device", default="cpu", type=parse_device, help="torch device, e.g. cpu or cuda (under torchrun, cuda means each rank's local GPU)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory layout for attacked models (often faster convolutions on GPU)")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"), help="mixed precision for fitting defenses only; attacks always run in float32 (default: off)")
    p.add_argument("--out", help="output directory (default: reports/runs/SUITE-TIMESTAMP)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output directory")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run in --out from its checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="also print each run's per-attack details (always in report.md), above the summary, which stays last")
    p.add_argument("--help-plugin", metavar="NAME", help="print the options of a plug-in (attack, defense, unlearner, ...) with their types, defaults and help, and exit")


def build_suite(args: argparse.Namespace):
    from .options import apply_settings, parse_plugin_spec
    from .registry import SUITES
    from .runtime import check_run_numbers
    from .suite import attack_norms, task_overrides
    from .threat_model import eps_by_norm

    suite = SUITES.get(args.suite).factory()
    attacks = tuple(parse_plugin_spec(a) for a in args.attack) if args.attack else None
    defenses = tuple(parse_plugin_spec(d) for d in args.defense) if args.defense else None
    eps = parse_eps(args.eps)
    if eps is not None:  # a list for every threat model goes to each one the attacks use
        eps = eps_by_norm(eps, attack_norms(attacks or suite.attacks))
    check_run_numbers(n=args.n, seed=args.seed, batch_size=args.batch_size, chunk_size=args.chunk_size)
    task, task_options = task_overrides(suite, args.task, args.data_dir)
    suite = suite.with_overrides(
        task_options=task_options,
        task=task,
        models=tuple(args.model) if args.model else None,
        attacks=attacks,
        defenses=defenses,
        eps=eps,
        n=args.n,
        seed=args.seed,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        checks=False if args.no_checks else None,
    )
    if args.settings:
        suite = suite.with_overrides(extra=apply_settings(suite.extra, args.settings, suite.sections))
    return suite


def cmd_eval(args: argparse.Namespace) -> int:
    from . import distributed
    from .checkpoint import CHECKPOINT_DIR, CheckpointStore
    from .render import write_outputs
    from .runner import Runner
    from .runtime import RuntimeOptions
    from .suite import Suite

    if getattr(args, "help_plugin", None):
        return print_plugin_help(args.help_plugin)
    options = RuntimeOptions(device=args.device, threads=args.threads, amp=getattr(args, "amp", "off"), channels_last=bool(getattr(args, "channels_last", False)))
    shard, device = distributed.setup(options.device)  # a process group only under torchrun
    options = dataclasses.replace(options, device=device)  # under torchrun: this rank's own GPU
    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out DIR, the directory of the interrupted run")
        out = Path(args.out)
        suite = Suite.from_json(CheckpointStore(out).load_suite())
    else:
        suite = build_suite(args)

        def fresh_out_dir() -> Path:
            path = resolve_out_dir(args.out, suite.name, args.force)
            if args.force:
                shutil.rmtree(path / CHECKPOINT_DIR, ignore_errors=True)
            return path

        out = distributed.on_main(fresh_out_dir)  # decided once, shared by every rank
    quiet = args.quiet or not shard.is_main
    log = (lambda m: None) if quiet else (lambda m: print(f"[robustbench_peft] {m}", file=sys.stderr))
    warn = (lambda m: print(f"warning: {m}", file=sys.stderr)) if shard.is_main else (lambda m: None)  # even with --quiet
    runner = Runner(suite, progress=not quiet, log=log, checkpoint_dir=str(out), options=options, warn=warn)
    report = runner.run()
    if not shard.is_main:
        return 0  # rank 0 writes the one report
    if options.amp != "off" and not runner.fit_amp_applied:
        print(f"warning: --amp {args.amp} had no effect: no defense in this suite fitted under mixed precision", file=sys.stderr)
    paths = write_outputs(report, out)
    if getattr(args, "verbose", False) and report.runs:
        print(report.details(), end="\n\n")  # above the summary: what a user sees last is the one-screen summary
    print(report.summary())
    print(f"\nreport: {paths['report.json']}  (also report.md, report.html, plots)")
    return 0


def plugin_help(name: str) -> list[str]:
    """Every registered plug-in called ``name``: its description and its options (``config.help_lines``)."""
    import difflib

    from .config import config_class_of, help_lines
    from .registry import ALL_REGISTRIES

    matches = [(registry, entry) for registry in ALL_REGISTRIES for entry in registry if entry.name == name]
    if not matches:
        known = sorted({entry.name for registry in ALL_REGISTRIES for entry in registry})
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown plug-in {name!r}.{hint} See `python -m robustbench_peft list` for every name.")
    lines: list[str] = []
    for registry, entry in matches:
        lines.append(f"{registry.kind} {entry.name}: {entry.description}")
        if config_class_of(entry.factory) is not None:
            lines += ["options (NAME:key=value,...):", *help_lines(entry.factory)]
        usage = getattr(entry.factory, "usage", None)  # a plug-in's own longer help, e.g. the file: sidecar format
        if callable(usage):
            lines += list(usage())
    return lines


def print_plugin_help(name: str) -> int:
    print("\n".join(plugin_help(name)))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import ALL_REGISTRIES

    if getattr(args, "name", None):
        return print_plugin_help(args.name)
    for registry in ALL_REGISTRIES:
        entries = list(registry)
        print(f"{registry.plural}:")
        for entry in entries:
            print(f"  {entry.name:<18} {entry.description}")
        if not entries:
            print("  (none)")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m robustbench_peft", description="Robustness and unlearning evaluation with standardized reports.")
    parser.add_argument("--version", action="store_true", help="print the package version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=ArgumentParser)
    eval_parser = sub.add_parser("eval", help="run an evaluation suite and write a report")
    add_eval_arguments(eval_parser)
    eval_parser.set_defaults(handler=cmd_eval)
    list_parser = sub.add_parser("list", help="list registered tasks, models, attacks, defenses, unlearners, suites")
    list_parser.add_argument("name", nargs="?", metavar="NAME", help="one plug-in: its options with their types, defaults and help")
    list_parser.set_defaults(handler=cmd_list)
    load_command_modules()
    for name, (help_text, add_arguments, handler) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        add_arguments(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        parser = make_parser()
        args = parser.parse_args(argv)
        if getattr(args, "version", False):
            from . import __version__

            print(f"robustbench_peft {__version__}")  # what a bug report names
            return 0
        if getattr(args, "handler", None) is None:
            parser.print_help()
            return 2
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
