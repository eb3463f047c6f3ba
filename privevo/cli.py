"""Private Evolution: DP synthetic data on Kubeflow Pipelines (``privevo`` or ``python pipeline.py``).

Commands: ``run`` (locally with kfp.local), ``compile``, ``upload``, ``submit``, ``schedule``,
``rerun`` (one step), ``audit``, ``report``, ``export`` (the synthetic set), ``budget`` (privacy accounting), ``serve``.
User errors print one line ``error: ...`` and exit with code 2.
"""


import argparse
import builtins
import contextlib
import io
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator

from privevo import runtime
from privevo.errors import UserError, extra_error, missing_extra
from privevo.step_table import STEP_NAMES, StepArgs, step

DEFAULT_RUN_ROOT = "runs"  # where a run id names a run when --run-root is not given
INTERRUPTED_EXIT_CODE = 130  # Ctrl-C: the shell's convention (128 + SIGINT)


def command_name() -> str:
    """How the user called this command line, for the commands it suggests: ``privevo`` (installed) or
    ``python pipeline.py`` (a checkout)."""
    return "privevo" if os.path.basename(sys.argv[0]) == "privevo" else "python pipeline.py"


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line (exit 2), without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def load_checked_config(args: argparse.Namespace):
    from privevo import shipped
    from privevo.privacy import check_planned_budget

    overrides = list(args.overrides)
    if getattr(args, "run_root", None):
        overrides.append(f"run_root={args.run_root}")
    config = shipped.load(args.config, overrides, local=args.command == "run")  # a file or a shipped config name
    check_planned_budget(config)
    return config


def new_run_id(name: str) -> str:
    import datetime

    return f"{name}-{datetime.datetime.now(datetime.UTC).strftime('%Y%m%d-%H%M%S')}"


# --------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> None:
    """Run the whole pipeline locally with kfp.local (tasks run as subprocesses, or in containers with --runner docker)."""
    from kfp import local

    from privevo.dag import KFP_LOCAL_PARALLEL_SHARDS, build_pipeline
    from privevo.run_record import Run, layout_for

    if "://" in args.pipeline_root:
        raise UserError("--pipeline-root must be a local folder for kfp.local; put the data plane in gs:// with --run-root")
    if args.resume:
        if args.config or args.run_id:
            raise UserError("--resume takes the run id and config stored in the run: drop --config and --run-id")
        run = Run.locate(args.resume, args.run_root or DEFAULT_RUN_ROOT).amend(args.overrides)
        config, run_id = run.config, run.run_id
        Run.check_new(config, run_id, resume=True, pipeline_root=args.pipeline_root)
        if args.runner == "docker":
            _local_docker().check_ready(config, args.pipeline_root)
        print(f"resuming run {run_id} from its stored config")
    else:
        if not args.config:
            raise UserError("give --config CFG (or --resume RUN_ID)")
        config = load_checked_config(args)
        if args.runner == "docker":
            _local_docker().check_ready(config, args.pipeline_root)
        run_id = args.run_id or new_run_id(config.name)
        # fail before kfp.local starts (resolve_config checks it again, without kfp.local's pipeline root)
        Run.check_new(config, run_id, resume=False, pipeline_root=args.pipeline_root)
        run = Run(config, layout_for(config, run_id))
    print(f"run {run_id}: {config.population.generations} generations of {config.population.size} samples "
          f"-> {run.layout.run_dir}")
    # kfp.local runs up to KFP_LOCAL_PARALLEL_SHARDS ParallelFor iterations at once on this machine:
    # the shard steps split its CPUs between them instead of oversubscribing them.
    concurrent_shards = min(config.population.num_shards, KFP_LOCAL_PARALLEL_SHARDS)
    os.environ[runtime.CONCURRENT_SHARDS_ENV] = str(concurrent_shards)
    runner, session = local.SubprocessRunner(use_venv=False), contextlib.nullcontext()
    if args.runner == "docker":  # every step in the image, with the mounts of its step only (local_docker.py)
        session = _local_docker().DockerSession(config, run, args.pipeline_root, concurrent_shards)
        runner = session.runner
    local.init(runner=runner, pipeline_root=args.pipeline_root, raise_on_error=True)
    started = time.time()
    pipeline_func = build_pipeline(config, local=True)
    log_path = os.path.join(args.pipeline_root, f"{run_id}.log")
    os.makedirs(args.pipeline_root, exist_ok=True)
    original_print = builtins.print  # kfp.local's ParallelFor threads can leave print indented
    resume_command = f"{command_name()} run --resume {run_id}" + (
        f" --run-root {config.run_root}" if config.run_root != DEFAULT_RUN_ROOT else "")
    with open(log_path, "a") as log, _TaskProgress(log, sys.stdout, _private_tasks(config)) as progress, session:
        try:
            with (_stop_on_interrupt(f"interrupted: continue run {run_id} with `{resume_command}`", log),
                  contextlib.redirect_stdout(progress), contextlib.redirect_stderr(progress)):
                pipeline_func(run_id=run_id, resume=bool(args.resume))
        except RuntimeError:
            raise UserError(f"{progress.failure()} (full log: {log_path}); "
                            f"{_after_failure(run, bool(args.resume), resume_command)}") from None
        finally:
            builtins.print = original_print
    _print_summary(run, time.time() - started)


def _after_failure(run, resumed: bool, resume_command: str) -> str:
    """What to do after a failed local run. A new run that released nothing is removed (its id is free again); any
    other is kept for ``--resume``, whose ``--set`` may fix a data or model path, resources or settings."""
    fix = (f"fix it, then continue with `{resume_command}` (add --set KEY=VALUE to change a data or model path, "
           "resources, evaluation or kubernetes settings)")
    if resumed:
        return fix
    if run.remove_if_unreleased():
        return f"nothing was released, so run {run.run_id} was removed: fix it and run the same command again"
    if not run.ledger().events:
        return f"{fix}, or remove {run.layout.run_dir} and {run.layout.private_dir} to start it again"
    return fix


@contextlib.contextmanager
def _stop_on_interrupt(message: str, log: io.TextIOBase) -> Iterator[None]:
    """Ctrl-C during a local run stops it now: the steps still running are interrupted and waited for (their files are
    written whole or not at all), then one line and exit code 130. Left alone, kfp.local would wait for them and
    retry the interrupted ones first."""

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while stopping changes nothing
        _stop_processes()
        log.flush()
        print(f"error: {message}", file=sys.__stderr__, flush=True)
        os._exit(INTERRUPTED_EXIT_CODE)  # kfp.local's threads would start the interrupted steps again

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_processes(deadline_s: float = 30.0) -> None:
    """Interrupt this process's descendants (the running steps) once each, and wait for them to exit."""
    signalled: set[int] = set()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for pid in set(_descendants()) - signalled:  # a step kfp.local started again since the last look
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            signalled.add(pid)
        if not any(os.path.exists(f"/proc/{pid}") and not _is_zombie(pid) for pid in signalled):
            return
        time.sleep(0.1)
    for pid in signalled:  # still running at the deadline
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _descendants() -> list[int]:
    """The ids of this process's descendants, from /proc (none where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rpartition(")")[2].split()[1])
                children.setdefault(parent, []).append(int(entry))
    found, pending = [], [os.getpid()]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _is_zombie(pid: int) -> bool:
    """Whether a process has exited and only waits to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _local_docker():
    """The Docker runner wiring (imports kfp.local's Docker support and the docker SDK only when asked for)."""
    import local_docker

    return local_docker


def _print_summary(run, seconds: float) -> None:
    from privevo import privacy, storage
    from privevo.report import format_value
    from privevo.steps import last_complete_generation

    metrics = storage.read_json(run.layout.metrics_json) if storage.exists(run.layout.metrics_json) else None
    ledger = run.ledger()
    reasons = privacy.non_private_reasons(run.config.privacy, ledger.events)
    if reasons:
        print(f"{privacy.NOT_PRIVATE}: {'; '.join(reasons)} (allowed by privacy.allow_non_private)")
    print(f"run path: {run.layout.run_dir}")
    print(f"report: {run.layout.report_index}")
    print(f"wall time: {seconds:.1f} s")
    print(f"data quality (private): {run.layout.data_quality}")
    votes = sum(e.reason != privacy.WARM_START for e in ledger.events)
    print(f"epsilon spent: {privacy.format_epsilon(ledger.epsilon())} at delta={run.config.privacy.delta:g} "
          f"over {votes} vote{'' if votes == 1 else 's'}"
          f"{' and the warm start' if any(e.reason == privacy.WARM_START for e in ledger.events) else ''}"
          " (per run: this run alone)")
    try:
        print("\n".join(privacy.format_dataset_summary(privacy.dataset_summary(privacy.load_dataset_ledger(run.config)),
                                                      per_run=False)))
    except (UserError, OSError):
        print("private data set: its spend over all runs is not shown (the private tier is not readable here)")
    if metrics:
        for row in (metrics["generations"][0], metrics["final"]):
            label = "generation 0" if row is metrics["generations"][0] else f"final (generation {row['generation']})"
            # scalars only (tables per class or column are in the report), and only those the run has: an unlabelled
            # run has no downstream accuracy
            shown = {k: v for k, v in row.items()
                     if k not in ("generation", "non_dp") and v is not None and not isinstance(v, (dict, list))}
            print(f"{label}: " + " ".join(f"{k}={format_value(v, k)}" for k, v in shown.items()))
    last = last_complete_generation(run)
    if last >= 0:
        print(f"synthetic data: {run.layout.population(last)}")
        print(f"export it: {command_name()} export {run.layout.run_dir} --to DIR")


def _private_tasks(config) -> tuple[str, ...]:
    """kfp.local's names of the tasks that read the private set (dp_vote's are dp-vote, dp-vote-2, ...)."""
    from privevo.step_table import STEPS

    return tuple(spec.name.replace("_", "-") for spec in STEPS if spec.reads_private(config))


class _TaskProgress(io.TextIOBase):
    """Sends kfp.local's verbose output to a log file and prints one line per finished task.

    The log file is in the released tier and the lines say when each task ran: their time stamps are left out, and
    the tasks that read the private set are printed without their time (both grow with the private set's size)."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*m")
    _TIME = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:[+-]\d{2}:\d{2}|Z)? ?"
                       r"|\b\d{2}:\d{2}:\d{2}\.\d{3}\b(?: - )?")
    _FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
    _STARTED = re.compile(r"Executing task '([^']+)'")
    _ERROR = re.compile(r"(?:UserError|Error|Exception): (.+)$")

    def __init__(self, log, terminal, private_tasks: tuple[str, ...] = ()) -> None:
        self.log, self.terminal, self.private_tasks = log, terminal, private_tasks
        self.buffer, self.done, self.last_error = "", 0, ""
        self.started: dict[str, float] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self.log.write(self._TIME.sub("", line) + "\n")
            self._scan(self._ANSI.sub("", line))
        return len(text)

    def _private(self, task: str) -> bool:
        return any(task == name or task.startswith(f"{name}-") for name in self.private_tasks)

    def _scan(self, line: str) -> None:
        if match := self._STARTED.search(line):
            self.started[match.group(1)] = time.time()
        elif match := self._FINISHED.search(line):
            name, status = match.groups()
            if status == "SUCCESS":
                self.done += 1
                seconds = time.time() - self.started.get(name, time.time())
                took = "" if self._private(name) else f" in {seconds:6.1f} s"
                print(f"[{self.done:3d}] {name:<36} done{took}", file=self.terminal, flush=True)
        elif (match := self._ERROR.search(line.strip())) and not (
                "raise_on_error" in line or "Inner task failed" in line):
            self.last_error = match.group(1).strip()
            self.last_task = next(reversed(self.started), "?")

    def failure(self) -> str:
        """One line naming the failed task and its last error."""
        return f"step {getattr(self, 'last_task', '?')} failed: {self.last_error or 'see the log'}"

    def __enter__(self) -> "_TaskProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.log.write(self._TIME.sub("", self.buffer))
        self.buffer = ""
        self.flush()


# ------------------------------------------------------------ compile and submit


def cmd_compile(args: argparse.Namespace) -> None:
    """Write the KFP IR YAML for a config (for Kubeflow Pipelines, or with --target vertex for Vertex AI Pipelines)."""
    from kfp import compiler

    from privevo.cluster import check_cluster_paths
    from privevo.dag import build_pipeline

    config = load_checked_config(args)
    check_cluster_paths(config, {}, args.allow_local)
    if "://" in args.output:
        raise UserError(f"--output {args.output}: write the pipeline to a local file (upload sends it to a cluster)")
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    if args.target == "vertex":
        from privevo import vertex

        vertex.check_config(config, {}, args.allow_local)
        vertex.compile_pipeline(config, args.output)
    else:
        compiler.Compiler().compile(build_pipeline(config), package_path=args.output)
    print(f"compiled {config.name}: {config.population.generations} generations, "
          f"{config.population.num_shards} shard(s) -> {args.output}")


KFP_HOST_ENV = "KFP_HOST"  # the default for --host


def _by_target(kfp_command: Callable[[argparse.Namespace], None],
               vertex_command: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    """The command that runs ``kfp_command``, or ``vertex_command`` with --target vertex (privevo.vertex)."""

    def command(args: argparse.Namespace) -> None:
        (vertex_command if args.target == "vertex" else kfp_command)(args)

    command.__doc__ = f"{kfp_command.__doc__} With --target vertex: {vertex_command.__doc__}"
    return command


# ------------------------------------------------------------------ rerun/report


def cmd_rerun(args: argparse.Namespace) -> None:
    """Compute one step of a stored run again from its stored inputs. Outputs that exist are replaced only with --force,
    and never once a DP release was made from them; dp_vote reuses its release unless --force-new-noise (charged)."""
    import json

    from privevo import steps, storage
    from privevo.run_record import Run

    spec = step(args.step)
    for flag, value, takes in (("--generation", args.generation, spec.per_generation),
                               ("--shard", args.shard, spec.sharded)):
        if takes and value is None:
            raise UserError(f"{args.step} needs {flag} N")
        if not takes and value is not None:
            raise UserError(f"{args.step} takes no {flag}")
    if args.force_new_noise and not spec.redraws:
        raise UserError(f"--force-new-noise redraws a vote's noise: {args.step} has none (use --force)")
    if args.force and spec.redraws:
        raise UserError(f"{args.step} never replaces its DP release: --force-new-noise draws new noise (charged again)")
    run = Run.locate(args.run, args.run_root)
    generation, shard = args.generation or 0, args.shard or 0
    if not spec.redraws:
        outputs, first_vote = steps.rerun_outputs(run, args.step, generation, shard)
        what = f"{args.step}'s output" + (f" for generation {args.generation}" if spec.per_generation else "") + (
            f" shard {args.shard}" if spec.sharded else "")
        if any(storage.exists(uri) for uri in outputs):
            if not args.force:
                raise UserError(f"{what} exists: add --force to compute it again and replace it")
            steps.replace_outputs(run, outputs, first_vote, what)
    result = spec.call(run, StepArgs(generation, shard, args.force_new_noise))
    print(json.dumps(result, sort_keys=True, default=str))


def cmd_audit(args: argparse.Namespace) -> int:
    """Verify a run's record: hashes, one ledger event per release, epsilon, no private data released."""
    import json

    from privevo import audit
    from privevo.run_record import Run

    report = audit.audit_run(Run.locate(args.run, args.run_root), allow_non_private=args.allow_non_private)
    print(json.dumps(report.to_dict(), indent=2, sort_keys=True) if args.json else audit.format_report(report))
    return 0 if report.ok else 1


def cmd_report(args: argparse.Namespace) -> None:
    """Regenerate report/ from a finished run's stored files, without rerunning anything."""
    from privevo import report, storage
    from privevo.run_record import Run

    run = Run.locate(args.run, args.run_root)
    if not storage.exists(run.layout.metrics_json):
        raise UserError(f"run {args.run} has no metrics.json yet: run its evaluate step first")
    index = report.write_report(run, storage.read_json(run.layout.metrics_json))
    print(f"report: {index}")


def cmd_export(args: argparse.Namespace) -> None:
    """Write a generation's synthetic samples in one of its modality's formats and the run's privacy statement to a
    new folder."""
    from privevo.export import export_run
    from privevo.run_record import Run

    folder = export_run(Run.locate(args.run, args.run_root), args.to, args.generation, args.format)
    print(f"exported: {folder}")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a local model until SIGTERM/SIGINT: images on the KServe v2 protocol (model.kind remote calls it),
    texts on the OpenAI API (model.kind openai_compatible calls it)."""
    from privevo import serve
    from privevo.config import load_config

    if args.config:
        served = serve.configured_model(load_config(args.config, args.overrides))
    elif args.model_kind and args.model_path:
        options = {key: getattr(args, key) for key in ("batch_size", "num_inference_steps", "device", "autocast",
                                                       "prompts", "sha256", "image_size", "channels", "threads")
                   if getattr(args, key) is not None}  # from_pretrained's keyword arguments
        served = serve.pretrained_model(args.model_kind, args.model_path, options, args.max_new_tokens or 64)
    else:
        raise UserError("serve needs --model-kind and --model-path (or --config CFG to serve its model section)")
    try:
        return serve.serve(served, args.host, args.port, args.model_name, args.token_env, args.graceful_timeout)
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has finished the calls in flight and stopped, then raised it again
        print("stopped serving (interrupted)", file=sys.stderr)
        return 0


# ------------------------------------------------------------------------ budget


def cmd_budget(args: argparse.Namespace) -> None:
    """Epsilon from a noise multiplier, or the noise multiplier for a target epsilon; or, with --dataset, what a
    private data set has spent (per run and in total) and what is left of its budget."""
    from privevo import privacy

    if args.dataset is not None:
        _print_dataset_budget(args.dataset, args.private_root)
        return
    if args.generations is None:
        raise UserError("give --generations T (or --dataset URI for a data set's spend)")
    privacy.validate_schedule_args(args.generations, args.delta, args.sampling_rate)
    if args.k < 1:
        raise UserError(f"--k must be at least 1, got {args.k}")
    if (args.noise_multiplier is None) == (args.epsilon is None):
        raise UserError("give exactly one of --noise-multiplier and --epsilon")
    if args.noise_multiplier is not None:
        sigma = args.noise_multiplier
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise UserError(f"--noise-multiplier must be a finite number >= 0, got {sigma}")
        epsilon = privacy.schedule_epsilon([sigma] * args.generations, args.delta, args.sampling_rate, args.mechanism,
                                           args.k)
        _print_budget(sigma, args)
        print(f"epsilon={privacy.format_epsilon(epsilon)}")
    else:
        sigma = privacy.calibrate_noise_multiplier(args.epsilon, args.delta, args.generations, args.sampling_rate,
                                                   args.mechanism, args.k)
        _print_budget(sigma, args)
        print(f"noise_multiplier={privacy.format_required_sigma(sigma)}")


def _print_dataset_budget(dataset: str, private_root: str) -> None:
    """The spend of every data-set ledger under ``private_root`` that declares the private path ``dataset``."""
    from privevo import privacy

    ledgers = privacy.dataset_ledgers(private_root, dataset)
    if not ledgers:
        print(f"private data set {dataset}: nothing spent under {private_root} (no vote has charged it)")
    for ledger in ledgers:
        print("\n".join(privacy.format_dataset_summary(privacy.dataset_summary(ledger))))


def _print_budget(sigma: float, args: argparse.Namespace) -> None:
    from privevo import privacy

    print(f"generations={args.generations} delta={args.delta:g} sampling_rate={args.sampling_rate:g} "
          f"mechanism={args.mechanism}")
    if args.report:
        planned = [privacy.PrivacyEvent(generation=g + 1, noise_multiplier=sigma, sampling_rate=args.sampling_rate,
                                        mechanism=args.mechanism, k=args.k, status="planned")
                   for g in range(args.generations)]
        print("\n".join(privacy.format_privacy_report(privacy.privacy_report(planned, args.delta))))
    if args.sampling_rate == 1.0 and sigma > 0 and args.mechanism == "gaussian":
        closed = privacy.gdp_epsilon([sigma] * args.generations, args.delta)
        print(f"closed-form mu-GDP cross-check: mu={privacy.format_epsilon(privacy.gdp_mu([sigma] * args.generations))} "
              f"epsilon={privacy.format_epsilon(closed)}")
    elif args.sampling_rate == 1.0 and sigma > 0:
        votes = [privacy.PrivacyEvent(generation=1, noise_multiplier=sigma, k=args.k)] * args.generations
        rho = privacy.zcdp_rho(votes)
        print(f"closed-form rho-zCDP cross-check: rho={privacy.format_epsilon(rho)} (sum over votes of 1/(2 sigma^2)) "
              f"epsilon<={privacy.format_epsilon(privacy.zcdp_epsilon(rho, args.delta))}")


# -------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    from privevo import kfp_client, vertex  # their modules import kfp and aiplatform only when a command runs

    parser = _OneLineParser(prog=command_name().removeprefix("python "), description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    budget = commands.add_parser("budget", help="privacy accounting: epsilon <-> noise multiplier")
    budget.add_argument("--noise-multiplier", type=float, help="per-vote sigma (noise std / sensitivity)")
    budget.add_argument("--epsilon", type=float, help="target epsilon: prints the noise multiplier that spends it")
    budget.add_argument("--generations", type=int, help="T: number of votes")
    budget.add_argument("--delta", type=float, default=1e-5)
    budget.add_argument("--sampling-rate", type=float, default=1.0, help="Poisson subsampling rate of the private set")
    budget.add_argument("--mechanism", choices=("discrete_gaussian", "gaussian"), default="discrete_gaussian",
                        help="the vote's noise (privacy.mechanism)")
    budget.add_argument("--k", type=int, default=1, help="neighbours per private image (privacy.k)")
    budget.add_argument("--report", action="store_true",
                        help="print the privacy report of the schedule (events, epsilon per generation and per delta, mu)")
    budget.add_argument("--dataset", metavar="URI",
                        help="instead: what the private data set at URI (private.path) has spent, per run and in total, "
                             "and its remaining budget (per data set, all runs)")
    budget.add_argument("--private-root", default="runs-private",
                        help="with --dataset: the private root holding its data-set ledgers")
    budget.set_defaults(func=cmd_budget)

    def with_config(sub: argparse.ArgumentParser, required: bool = True) -> None:
        sub.add_argument("--config", required=required, help="experiment config (YAML)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config key, e.g. --set population.generations=3 (repeatable)")

    run = commands.add_parser("run", help="run the pipeline locally (kfp.local)")
    with_config(run, required=False)
    run.add_argument("--run-root", help="released data plane: a folder or gs://bucket/prefix")
    run.add_argument("--run-id", help="run folder name (default: NAME-UTCTIME)")
    run.add_argument("--resume", metavar="RUN",
                     help="continue a failed or interrupted run (its id under --run-root, or its path) from its last "
                          "complete generation; --set may change its data and model paths, resources, evaluation and "
                          "kubernetes settings")
    run.add_argument("--pipeline-root", default="local_outputs", help="where kfp.local keeps its task artifacts")
    run.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                     help="run each step as a local subprocess, or in its container image (make images) with "
                          "only its step's folders mounted and no network")
    run.set_defaults(func=cmd_run)

    def with_allow_local(sub: argparse.ArgumentParser) -> None:
        from privevo.cluster import ALLOW_LOCAL_HELP

        sub.add_argument("--allow-local", action="store_true", help=ALLOW_LOCAL_HELP)

    def with_target(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--target", choices=vertex.TARGETS, default="kfp",
                         help="kfp: Kubeflow Pipelines (default); vertex: Vertex AI Pipelines (docs/vertex.md)")

    comp = commands.add_parser("compile", help="write the KFP pipeline YAML")
    with_config(comp)
    with_allow_local(comp)
    comp.add_argument("--output", required=True)
    with_target(comp)
    comp.set_defaults(func=cmd_compile)

    def with_kfp(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--host", help=f"the KFP API endpoint, e.g. http://localhost:8080 (default: ${KFP_HOST_ENV})")
        sub.add_argument("--namespace", help="Kubernetes namespace of a multi-user Kubeflow (experiments, pipelines, runs)")
        sub.add_argument("--token-env", metavar="NAME",
                         help="send the bearer token held in this environment variable (never printed)")
        sub.add_argument("--skip-version-check", action="store_true",
                         help="go on when the KFP backend reports no version, or one older than the pipeline needs")

    def with_template(sub: argparse.ArgumentParser) -> None:
        with_kfp(sub)
        with_config(sub, required=False)
        with_allow_local(sub)
        sub.add_argument("--pipeline-id", help="run an uploaded pipeline instead of compiling --config (see upload)")
        sub.add_argument("--pipeline", metavar="NAME", help="run an uploaded pipeline by name, e.g. private-evolution-demo")
        sub.add_argument("--version-id", help="the uploaded pipeline's version to run (default: its latest)")
        sub.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
                         help="set a run parameter, e.g. --param epsilon=2 --param degrees=[0.6,0.5] (repeatable)")
        sub.add_argument("--service-account",
                         help="the run's Kubernetes service account (default: the config's kubernetes.public_service_account); "
                              "with --target vertex the job's Google service account, NAME@PROJECT.iam.gserviceaccount.com")
        sub.add_argument("--experiment", default="private-evolution", help="the KFP experiment the runs belong to")
        with_target(sub)
        sub.add_argument("--project", help="with --target vertex: the Google Cloud project that runs the job")
        sub.add_argument("--location", default="us-central1", help="with --target vertex: the job's region")

    upload = commands.add_parser("upload", help="register the pipeline and a new version of it on Kubeflow Pipelines")
    with_config(upload)
    with_allow_local(upload)
    with_kfp(upload)
    upload.add_argument("--version", help="the new version's name (default: PIPELINE-UTCTIME)")
    upload.set_defaults(func=kfp_client.upload)

    submit = commands.add_parser("submit", help="start a run on Kubeflow Pipelines")
    with_template(submit)
    submit.add_argument("--run-id", help="run folder name (default: the KFP run's own id; NAME-UTCTIME on Vertex AI)")
    submit.set_defaults(func=_by_target(kfp_client.submit, vertex.submit))

    schedule = commands.add_parser("schedule", help="create a recurring run on Kubeflow Pipelines")
    with_template(schedule)
    schedule.add_argument("--cron", required=True, help="cron expression, six fields, seconds first: '0 0 3 * * *'")
    schedule.add_argument("--name", help="the recurring run's name (default: PIPELINE-recurring)")
    schedule.set_defaults(func=_by_target(kfp_client.schedule, vertex.schedule))

    rerun = commands.add_parser("rerun", help="re-execute one step of a stored run")
    rerun.add_argument("run", metavar="RUN", help="a run id under --run-root, or the run path `run` printed (local or gs://)")
    rerun.add_argument("--step", required=True, choices=STEP_NAMES)
    rerun.add_argument("--generation", type=int, help="the generation (vote), for the steps that have one")
    rerun.add_argument("--shard", type=int, help="the shard, for the sharded steps")
    rerun.add_argument("--force", action="store_true",
                       help="replace outputs that exist (refused once a DP release was made from them)")
    rerun.add_argument("--force-new-noise", action="store_true",
                       help="dp_vote only: draw new noise although the release exists (charged again)")
    rerun.add_argument("--run-root", default=DEFAULT_RUN_ROOT)
    rerun.set_defaults(func=cmd_rerun)

    aud = commands.add_parser("audit", help="verify a run: hashes, ledger, epsilon, no private data released")
    aud.add_argument("run", metavar="RUN", help="a run id under --run-root, or the run path `run` printed (local or gs://)")
    aud.add_argument("--run-root", default="runs")
    aud.add_argument("--json", action="store_true", help="machine-readable output")
    aud.add_argument("--allow-non-private", action="store_true",
                     help="accept a run without a DP guarantee (noise multiplier 0, allowed by the operator's "
                          "privacy.allow_non_private): check the rest instead of failing")
    aud.set_defaults(func=cmd_audit)

    rep = commands.add_parser("report", help="regenerate the HTML report of a run")
    rep.add_argument("run", metavar="RUN", help="a run id under --run-root, or the run path `run` printed (local or gs://)")
    rep.add_argument("--run-root", default="runs")
    rep.set_defaults(func=cmd_report)

    exp = commands.add_parser("export", help="write a generation's synthetic samples and the run's privacy statement")
    exp.add_argument("run", metavar="RUN", help="a run id under --run-root, or the run path `run` printed (local or gs://)")
    exp.add_argument("--to", required=True, metavar="DIR", help="a new or empty local folder")
    exp.add_argument("--generation", type=int, default=-1, help="which generation (default: the last)")
    exp.add_argument("--format", help="one of the run's modality's formats (default: its first): images imagefolder "
                                      "(PNG files and metadata.csv) or npz, tables csv or parquet, texts jsonl or csv")
    exp.add_argument("--run-root", default="runs")
    exp.set_defaults(func=cmd_export)

    srv = commands.add_parser("serve", help="serve a local model on the KServe v2 protocol (images, for model.kind "
                                            "remote) or the OpenAI API (texts, for model.kind openai_compatible)")
    with_config(srv, required=False)
    srv.add_argument("--model-kind", help="a local backend: ddpm_unet, stable_diffusion or hf_causal_lm")
    srv.add_argument("--model-path", help="the model folder, its gs:// prefix (with --sha256), or a hub name in the local cache")
    srv.add_argument("--sha256", help="the model folder's digest (model.sha256): required for gs://, checked before loading")
    srv.add_argument("--model-name", help="the name clients call it by (default: the kind)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    srv.add_argument("--port", type=int, default=8080)
    srv.add_argument("--batch-size", type=int, help="samples per forward pass (model.batch_size)")
    srv.add_argument("--num-inference-steps", type=int)
    srv.add_argument("--device", help="auto, cpu or cuda")
    srv.add_argument("--autocast", choices=("auto", "off", "bfloat16", "float16"))
    srv.add_argument("--prompts", nargs="+", help="stable_diffusion: one prompt per class")
    srv.add_argument("--image-size", type=int, help="default: the model's own (ddpm_unet)")
    srv.add_argument("--channels", type=int, choices=(1, 3), help="default: the model's own (ddpm_unet)")
    srv.add_argument("--threads", type=int, help="hf_causal_lm: torch threads (text.threads)")
    srv.add_argument("--max-new-tokens", type=int, help="hf_causal_lm: a request's token limit when it names none")
    srv.add_argument("--token-env", help="require the bearer token held in this environment variable")
    srv.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to finish calls in flight on SIGTERM")
    srv.set_defaults(func=cmd_serve)
    for sub in commands.choices.values():  # `pipeline.py COMMAND --help` describes the command
        sub.description = sub.description or sub.get_default("func").__doc__
    return parser





def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "run":  # kfp.local manages logging during a local run
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # a command that has nothing to clean up or resume: one line, no traceback
        print("error: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except ModuleNotFoundError as error:  # an optional extra (kfp, gcs, serve) that this command needs
        extra = missing_extra(error)
        if extra is None:
            raise
        print(f"error: {extra_error(extra)}", file=sys.stderr)
        return extra_error(extra).exit_code


if __name__ == "__main__":
    sys.exit(main())
