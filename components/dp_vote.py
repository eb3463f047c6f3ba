"""dp_vote: the DP nearest-neighbour vote of one generation (with lookahead)."""


from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


def dp_vote(
    resolved: Input[Artifact],
    generation: int,
    force_new_noise: bool,
    redraw_key: str,
    private_embeddings: Input[Dataset],
    synthetic_embeddings: Input[list[Dataset]],
    selection: Output[Dataset],
    privacy: Output[Metrics],
):
    """Releases the noisy histogram (charged in the ledger before it is written once) and selects parents.

    ``redraw_key`` is the KFP run's id: with ``force_new_noise`` a retried task reuses its redraw.
    """
    from components.common import log_metrics, open_run, read_reference, write_reference
    from privevo import steps

    run = open_run(resolved)
    steps.verify_references([read_reference(shard) for shard in synthetic_embeddings])
    reference = steps.dp_vote(run, int(generation), read_reference(private_embeddings), force_new_noise, redraw_key)
    write_reference(selection, reference)
    log_metrics(privacy, {"epsilon": reference["epsilon"], "generation": int(generation)})


def main(argv: list[str] | None = None) -> int:
    from components.common import step_cli

    return step_cli("dp_vote", argv)


if __name__ == "__main__":
    raise SystemExit(main())
