"""dp_vote: the DP nearest-neighbour vote of one generation (with lookahead).

It releases the noisy histogram (charged in the ledger before it is written once) and selects
the parents (``privevo.components.common.dp_vote_task``). ``force_new_noise`` and the redraw key (the
KFP run's id, so a retried task reuses its redraw) come with the run that resolve_config resolved.
"""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


def dp_vote(resolved: Input[Artifact], generation: int, private_embeddings: Input[Dataset],
            synthetic_embeddings: Input[list[Dataset]], selection: Output[Dataset], privacy: Output[Metrics]):
    from privevo.cluster import resolved_run, task_key, user_error_ends_task
    from privevo.components.common import dp_vote_task
    with user_error_ends_task(task_key("dp_vote", generation), *resolved_run(resolved)):
        dp_vote_task(resolved, generation, private_embeddings, synthetic_embeddings, selection, privacy)


def main(argv: list[str] | None = None) -> int:
    from privevo.components.common import step_cli

    return step_cli("dp_vote", argv)


if __name__ == "__main__":
    raise SystemExit(main())
