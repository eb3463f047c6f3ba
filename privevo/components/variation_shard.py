"""variation_shard: one shard's children of a generation, then their embedding for the next vote, in one process.

generate_variations, then embed_synthetic for the vote of generation + 1, loading each network
once (``privevo.components.common.variation_shard_task``); public data only.
"""


from kfp.dsl import Artifact, Dataset, Input, Model, Output


def variation_shard(resolved: Input[Artifact], generation: int, shard: int, selection: Input[Dataset],
                    population: Output[Dataset], embeddings: Output[Dataset], model: Input[Model] | None = None):
    from privevo.cluster import resolved_run, task_key, user_error_ends_task
    from privevo.components.common import variation_shard_task
    with user_error_ends_task(task_key("variation_shard", generation, shard), *resolved_run(resolved)):
        variation_shard_task(resolved, generation, shard, selection, population, embeddings, model)


def main(argv: list[str] | None = None) -> int:
    from privevo.components.common import step_cli

    return step_cli("variation_shard", argv)


if __name__ == "__main__":
    raise SystemExit(main())
