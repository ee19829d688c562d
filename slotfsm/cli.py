"""The ``slotfsm`` command line.

One small ``_add_<command>`` function per subcommand registers its arguments
and its handler (``_run_<command>``); :func:`build_parser` calls them all.
Handlers import what they need when they run, so ``slotfsm --help`` and
``--version`` cost little more than the interpreter's own start-up and
``validate`` imports neither anyio nor httpx (``tests/bench/bench_cli.py``).

Exit status: 0 on success, 1 when a model file fails validation, 2 for bad
arguments or a bad registry, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import slotfsm

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import TextIO, TypeAlias

    from slotfsm.registry import ModelEntry

    Handler: TypeAlias = Callable[[argparse.Namespace], int]

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

PROGRESS_MIN_BYTES = 64 * 1024 * 1024
"""Files at least this large show hashing progress on a terminal."""


class UsageError(Exception):
    """Bad arguments found after parsing; exits with status 2."""


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized like ``shutil.get_terminal_size`` without importing shutil.

    (shutil brings bz2, lzma and fnmatch along, a third of ``--help``'s cost.)
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_columns() - 2)


def _terminal_columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="slotfsm",
        description="Model-slot lifecycle for Lemonade Server.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"slotfsm {slotfsm.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_validate(commands)
    _add_diagram(commands)
    _add_demo(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except UsageError as exc:
        print(f"slotfsm {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# -- validate -----------------------------------------------------------------


def _add_validate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "validate",
        formatter_class=_HelpFormatter,
        help="check a model file before it is loaded (size, GGUF magic, sha256)",
        description=(
            "Check a model file as a slot does before loading it (ADR-0007): "
            "it exists, is a regular file, has the expected size, starts with "
            "the GGUF magic and hashes to the expected sha256. "
            "Either give PATH with --sha256 and --size, or --registry FILE and a model NAME."
        ),
    )
    parser.add_argument("target", metavar="PATH|NAME", help="model file, or model name")
    parser.add_argument("--sha256", metavar="HEX", help="expected sha256 (64 hex digits)")
    parser.add_argument("--size", metavar="BYTES", type=int, help="expected size (0 = unknown)")
    parser.add_argument("--not-gguf", action="store_true", help="the file is not GGUF")
    parser.add_argument("--registry", metavar="FILE", help="look NAME up in this registry")
    parser.add_argument(
        "--hash-policy",
        choices=["always", "fingerprint"],
        default="fingerprint",
        help="re-hash always, or skip files unchanged since their last pass (default)",
    )
    parser.set_defaults(handler=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
    from slotfsm import preload

    entry = _entry_from_args(args)
    cache_path = preload.default_cache_path()
    cache = preload.FingerprintCache.load(cache_path)
    with _Progress(sys.stderr, entry.path) as progress:
        failure = preload.validate_sync(
            entry,
            policy=preload.HashPolicy(args.hash_policy),
            cache=cache,
            progress=progress,
        )
    if failure is not None:
        print(f"{failure.kind.name}: {failure.message}", file=sys.stderr)
        return EXIT_FAILED
    try:
        cache.save(cache_path)
    except OSError as exc:
        print(f"warning: cannot save the fingerprint cache {cache_path}: {exc}", file=sys.stderr)
    print(f"ok: {entry.path} (model {entry.name!r})")
    return EXIT_OK


def _entry_from_args(args: argparse.Namespace) -> ModelEntry:
    from slotfsm.errors import RegistryError, UnknownModelError
    from slotfsm.registry import ModelEntry, Registry

    if args.registry is not None:
        given = [f"--{n}" for n in ("sha256", "size") if getattr(args, n) is not None]
        if args.not_gguf:
            given.append("--not-gguf")
        if given:
            raise UsageError(f"{', '.join(given)} cannot be combined with --registry")
        try:
            return Registry.from_file(args.registry)[args.target]
        except (RegistryError, UnknownModelError) as exc:
            raise UsageError(str(exc)) from None
    if args.sha256 is None or args.size is None:
        raise UsageError("PATH needs --sha256 and --size (or use --registry FILE NAME)")
    try:
        return ModelEntry(
            name=os.path.basename(args.target) or args.target,
            path=args.target,
            sha256=args.sha256,
            size=args.size,
            gguf=not args.not_gguf,
        )
    except RegistryError as exc:
        raise UsageError(str(exc)) from None


class _Progress:
    """Hashing progress on a terminal: bytes, rate, ETA, at most ~10 times a second.

    Does nothing when the stream is not a terminal or the file is under
    :data:`PROGRESS_MIN_BYTES`.  The line is cleared when the block ends.
    """

    interval = 0.1

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.enabled = stream.isatty()
        self.started = time.monotonic()
        self.last_shown = 0.0
        self.shown = False

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < PROGRESS_MIN_BYTES:
            return
        now = time.monotonic()
        if now - self.last_shown < self.interval and done < total:
            return
        self.last_shown = now
        self.shown = True
        self.stream.write("\r\x1b[K" + _progress_line(self.label, done, total, now - self.started))
        self.stream.flush()


def _progress_line(label: str, done: int, total: int, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    percent = 100 * done / total if total else 100.0
    return (
        f"hashing {label}: {_mib(done)} / {_mib(total)} MiB ({percent:.0f}%),"
        f" {_mib(int(rate))} MiB/s, ETA {eta:.0f} s"
    )


def _mib(count: int) -> str:
    return f"{count / (1024 * 1024):,.0f}"


# -- diagram ------------------------------------------------------------------


def _add_diagram(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "diagram",
        formatter_class=_HelpFormatter,
        help="print the slot lifecycle, generated from the rulebook",
        description=(
            "Print the slot lifecycle as generated from the rulebook the engine runs: "
            "Mermaid, Graphviz DOT, SVG (needs Graphviz's 'dot'), or a Markdown table of "
            "what every event does in every state."
        ),
    )
    parser.add_argument("--format", choices=["mermaid", "dot", "svg", "table"], default="mermaid")
    parser.add_argument("--highlight", metavar="STATE", help="mark this state (for dashboards)")
    parser.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    parser.set_defaults(handler=_run_diagram)


def _run_diagram(args: argparse.Namespace) -> int:
    from slotfsm import diagram
    from slotfsm.states import SlotState

    highlight = None
    if args.highlight is not None:
        try:
            highlight = SlotState(args.highlight)
        except ValueError:
            states = ", ".join(s.value for s in SlotState)
            raise UsageError(f"no state {args.highlight!r} (states: {states})") from None
    try:
        text = diagram.render(args.format, highlight)
    except diagram.GraphvizMissingError as exc:
        print(f"slotfsm diagram: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.output is None:
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
    return EXIT_OK


# -- demo ---------------------------------------------------------------------


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        formatter_class=_HelpFormatter,
        help="run the whole lifecycle against the built-in fake Lemonade",
        description=(
            "Start the built-in fake Lemonade Server on a free loopback port and run a short "
            "story: two slots load, a third fails validation without touching the server, a "
            "hung load times out once, an idle model is unloaded, and an evict-all caused by "
            "a real load failure is noticed. Exit 0 when the story went as designed."
        ),
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import anyio

    from slotfsm.demo import run_demo, use_color

    if args.backend == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            raise UsageError("--backend trio needs trio installed (pip install trio)") from None
    diverged = anyio.run(
        lambda: run_demo(sys.stdout, color=use_color(sys.stdout)), backend=args.backend
    )
    return EXIT_FAILED if diverged else EXIT_OK
