"""embed_synthetic: one shard of a population embedded for the next vote (PE's lookahead)."""


from kfp.dsl import Artifact, Dataset, Input, Model, Output


def embed_synthetic(resolved: Input[Artifact], generation: int, shard: int,
                    population: Input[Dataset], embeddings: Output[Dataset],
                    model: Input[Model] | None = None):
    """Embeds this shard of population generation-1 for the vote of generation (lookahead means); public data only."""
    from privevo import steps
    from privevo.components.common import open_run, read_reference, write_reference

    run = open_run(resolved, model)
    steps.verify_references([read_reference(population)])
    write_reference(embeddings, steps.embed_synthetic(run, int(generation), int(shard)))


def main(argv: list[str] | None = None) -> int:
    from privevo.components.common import step_cli

    return step_cli("embed_synthetic", argv)


if __name__ == "__main__":
    raise SystemExit(main())
