"""warm_start: the optional DP warm start, the private set's noisy 1-way marginals (privacy.warm_start_share)."""

from kfp.dsl import Artifact, Dataset, Input, Output


def warm_start(resolved: Input[Artifact], marginals: Output[Dataset]):
    """Releases the private set's noisy 1-way marginals once per run (charged in the ledger); outputs a reference."""
    from privevo import steps
    from privevo.cluster import resolved_run, user_error_ends_task
    from privevo.components.common import open_run, write_reference

    with user_error_ends_task("warm_start", *resolved_run(resolved)):
        write_reference(marginals, steps.warm_start(open_run(resolved)))


def main(argv: list[str] | None = None) -> int:
    from privevo.components.common import step_cli

    return step_cli("warm_start", argv)


if __name__ == "__main__":
    raise SystemExit(main())
