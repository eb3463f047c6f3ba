"""evaluate: metrics per generation, privacy spent, the modality's report views and the report."""


from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output


def evaluate(resolved: Input[Artifact], population_shards: Input[list[Dataset]],
             metrics: Output[Metrics], report: Output[HTML], summary: Output[Markdown]):
    """Scores every generation, writes metrics.json and the report, and shows them in the KFP UI."""
    from privevo import evaluation, steps
    from privevo.cluster import resolved_run, user_error_ends_task
    from privevo.components.common import log_metrics, open_run, read_reference

    with user_error_ends_task("evaluate", *resolved_run(resolved)):
        run = open_run(resolved)
        steps.verify_references([read_reference(shard) for shard in population_shards])
        result = evaluation.evaluate_run(run)
        log_metrics(metrics, evaluation.headline_metrics(result))
        with open(report.path, "w") as handle:
            handle.write(evaluation.report_html(run, inline_images=True))
        with open(summary.path, "w") as handle:
            handle.write(evaluation.summary_markdown(result))


def main(argv: list[str] | None = None) -> int:
    from privevo.components.common import step_cli

    return step_cli("evaluate", argv)


if __name__ == "__main__":
    raise SystemExit(main())
