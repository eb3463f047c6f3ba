"""generate_initial: RANDOM_API for one shard of generation 0 (public model only)."""


from kfp.dsl import Artifact, Dataset, Input, Model, Output


def generate_initial(resolved: Input[Artifact], shard: int, population: Output[Dataset],
                     model: Input[Model] | None = None):
    """Samples generation 0's shard from the public model; no private data is read."""
    from privevo import steps
    from privevo.components.common import open_run, write_reference

    write_reference(population, steps.generate_initial(open_run(resolved, model), int(shard)))


def main(argv: list[str] | None = None) -> int:
    from privevo.components.common import step_cli

    return step_cli("generate_initial", argv)


if __name__ == "__main__":
    raise SystemExit(main())
