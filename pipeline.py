"""Private Evolution as a Kubeflow pipeline, and its command line.

Commands: ``budget`` (privacy accounting).
User errors print one line ``error: ...`` and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

from privevo.errors import UserError


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line (exit 2), without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------------ budget


def cmd_budget(args: argparse.Namespace) -> None:
    """Epsilon from a noise multiplier, or the noise multiplier for a target epsilon."""
    from privevo import privacy

    privacy.validate_schedule_args(args.generations, args.delta, args.sampling_rate)
    if (args.noise_multiplier is None) == (args.epsilon is None):
        raise UserError("give exactly one of --noise-multiplier and --epsilon")
    if args.noise_multiplier is not None:
        sigma = args.noise_multiplier
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise UserError(f"--noise-multiplier must be a finite number >= 0, got {sigma}")
        epsilon = privacy.schedule_epsilon([sigma] * args.generations, args.delta, args.sampling_rate)
        _print_budget(sigma, args)
        print(f"epsilon={epsilon:.4f}")
    else:
        sigma = privacy.calibrate_noise_multiplier(args.epsilon, args.delta, args.generations, args.sampling_rate)
        _print_budget(sigma, args)
        print(f"noise_multiplier={sigma:.4f}")


def _print_budget(sigma: float, args: argparse.Namespace) -> None:
    from privevo import privacy

    print(f"generations={args.generations} delta={args.delta:g} sampling_rate={args.sampling_rate:g}")
    if args.sampling_rate == 1.0 and sigma > 0:
        closed = privacy.gdp_epsilon([sigma] * args.generations, args.delta)
        print(f"closed-form mu-GDP cross-check: mu={privacy.gdp_mu([sigma] * args.generations):.4f} epsilon={closed:.4f}")


# -------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="pipeline.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    budget = commands.add_parser("budget", help="privacy accounting: epsilon <-> noise multiplier")
    budget.add_argument("--noise-multiplier", type=float, help="per-vote sigma (noise std / sensitivity)")
    budget.add_argument("--epsilon", type=float, help="target epsilon: prints the noise multiplier that spends it")
    budget.add_argument("--generations", type=int, required=True, help="T: number of votes")
    budget.add_argument("--delta", type=float, default=1e-5)
    budget.add_argument("--sampling-rate", type=float, default=1.0, help="Poisson subsampling rate of the private set")
    budget.set_defaults(func=cmd_budget)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
