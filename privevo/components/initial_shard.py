"""initial_shard: generation 0's shard (RANDOM_API), then its embedding for vote 1, in one process."""


from kfp.dsl import Artifact, Dataset, Input, Model, Output


def initial_shard(resolved: Input[Artifact], shard: int, population: Output[Dataset], embeddings: Output[Dataset],
                  model: Input[Model] | None = None):
    """generate_initial then embed_synthetic for vote 1 on one shard, loading each network once; public data only."""
    from privevo.cluster import resolved_run, task_key, user_error_ends_task
    from privevo.components.common import open_run, write_shard_outputs

    with user_error_ends_task(task_key("initial_shard", shard=shard), *resolved_run(resolved)):
        write_shard_outputs("initial_shard", open_run(resolved, model), 0, int(shard), population, embeddings)


def main(argv: list[str] | None = None) -> int:
    from privevo.components.common import step_cli

    return step_cli("initial_shard", argv)


if __name__ == "__main__":
    raise SystemExit(main())
