"""variation_shard: one shard's children of a generation, then their embedding for the next vote, in one process."""

from kfp.dsl import Artifact, Dataset, Input, Output


def variation_shard(resolved: Input[Artifact], generation: int, shard: int, selection: Input[Dataset],
                    population: Output[Dataset], embeddings: Output[Dataset]):
    """generate_variations then embed_synthetic for vote generation+1 on one shard, loading each network once."""
    from components.common import open_run, read_reference, write_reference
    from privevo import steps

    run = open_run(resolved)
    steps.verify_references([read_reference(selection)])
    write_reference(population, steps.generate_variations(run, int(generation), int(shard)))
    write_reference(embeddings, steps.embed_synthetic(run, int(generation) + 1, int(shard)))


def main(argv: list[str] | None = None) -> int:
    from components.common import step_cli

    return step_cli("variation_shard", argv)


if __name__ == "__main__":
    raise SystemExit(main())
