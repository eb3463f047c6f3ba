"""embed_private: embed the private set once per run into the private tier."""

from kfp.dsl import Artifact, Dataset, Input, Output


def embed_private(resolved: Input[Artifact], private_embeddings: Output[Dataset]):
    """Embeds the private images; outputs only a reference (its URI) to the private tier."""
    from privevo import steps
    from privevo.cluster import resolved_run, user_error_ends_task
    from privevo.components.common import open_run, write_reference

    with user_error_ends_task("embed_private", *resolved_run(resolved)):
        write_reference(private_embeddings, steps.embed_private(open_run(resolved)))


def main(argv: list[str] | None = None) -> int:
    from privevo.components.common import step_cli

    return step_cli("embed_private", argv)


if __name__ == "__main__":
    raise SystemExit(main())
