"""generate_variations: VARIATION_API on one shard of the selected parents."""


from kfp.dsl import Artifact, Dataset, Input, Model, Output


def generate_variations(resolved: Input[Artifact], generation: int, shard: int,
                        selection: Input[Dataset], population: Output[Dataset],
                        model: Input[Model] | None = None):
    """Makes one variation per selected parent of this shard; no private data is read."""
    from privevo import steps
    from privevo.cluster import resolved_run, task_key, user_error_ends_task
    from privevo.components.common import open_run, read_reference, write_reference

    with user_error_ends_task(task_key("generate_variations", generation, shard), *resolved_run(resolved)):
        run = open_run(resolved, model)
        steps.verify_references([read_reference(selection)])
        write_reference(population, steps.generate_variations(run, int(generation), int(shard)))


def main(argv: list[str] | None = None) -> int:
    from privevo.components.common import step_cli

    return step_cli("generate_variations", argv)


if __name__ == "__main__":
    raise SystemExit(main())
