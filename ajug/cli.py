"""The ``ajug`` command line: run, serve, work, status.

Every ``AjugError`` is printed as one line saying what is wrong and what to do; ``-v`` adds the
traceback. The token is read from ``AJUG_TOKEN`` or ``--token-file`` so that it never shows in
the process list (``--token`` works but is visible to other users of the machine), and then kept
in memory only (``access.py``: out of the environment that jugfile and task code see).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from .access import (
    bound_addresses,
    check_bound,
    forget_tokens,
    read_token,
    read_token_fd,
    spawn_with_token,
    token_fd,
)
from .cliparams import (
    AT_LEAST_ONE,
    AT_LEAST_ZERO,
    CONTEXT_SETTINGS,
    EXIT_STATUSES,
    PORT,
    POSITIVE_SECONDS,
    SECONDS,
    coordinator_options,
    dashboard_options,
    parse_address,
    setup_logging,
    tls_context,
    verbosity,
    verbosity_options,
)
from .errors import AjugError, UsageError
from .launch.options import launch_options
from .local import worker_command
from .protocol.client import new_loop_runner, query_status
from .runreport import RunContext, end_of_run, install_stop, look_for_stale
from .servesetup import coordinator_settings, start_dashboard, start_launcher
from .workoffer import child_args, host_offer, reexec


# -- commands ---------------------------------------------------------------------------------
@click.group(context_settings=CONTEXT_SETTINGS)
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug); tracebacks on errors.")
@click.option("-q", "--quiet", count=True, help="Less output.")
@click.version_option(package_name="ajug")
def cli(verbose: int, quiet: int) -> None:
    """ajug: run a jugfile's tasks on any number of processes and machines."""
    setup_logging(verbose, quiet)


@cli.command(context_settings=CONTEXT_SETTINGS, epilog=EXIT_STATUSES)
@click.argument("jugfile")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=PORT, default=5555, show_default=True, help="Port (0: pick a free one and print it).")
@click.option("--stay", is_flag=True, help="Keep serving after everything is done.")
@click.option("--handshake-timeout", type=POSITIVE_SECONDS, default=None, hidden=True,
              help="Seconds a new connection has to complete the handshake (default 10).")
@dashboard_options
@coordinator_options
@launch_options
def serve(jugfile: str, host: str, port: int, stay: bool, handshake_timeout: float | None,
          store_url: str | None, dashboard: int | None, dashboard_host: str, **kw: Any) -> int:
    """Coordinate a jugfile's tasks: workers connect with `ajug work HOST:PORT`, or are
    started as batch jobs with --workers slurm (pbs, sge, lsf, exec:...)."""
    from .coordinator import Coordinator
    from .launch import options as launch

    lo = launch.pop_launch_options(kw, "serve")
    if lo is not None:
        if click.get_current_context().get_parameter_source("host") == click.core.ParameterSource.DEFAULT:
            host = launch.listen_host(lo)
        launch.prepare(lo, jugfile, kw)
    settings = coordinator_settings(jugfile, store_url, host, port, **kw)
    settings.stay = stay
    if handshake_timeout is not None:
        if not handshake_timeout > 0:
            raise UsageError("--handshake-timeout must be a positive number of seconds")
        settings.handshake_timeout_s = handshake_timeout

    ctx = RunContext(jugfile, store_url, settings.store_url)

    async def main() -> int:
        coord = Coordinator(settings)
        await coord.listen()
        try:
            check_bound(settings.host, coord.sockets, settings.token)
        except UsageError:
            await coord.close()
            raise
        await coord.load()
        await start_dashboard(coord, dashboard, dashboard_host)
        every = "" if settings.host else f"every interface ({', '.join(bound_addresses(coord.sockets))}), "
        print(f"ajug: serving {Path(settings.jugfile).name} on {settings.host or '*'}:{coord.port} "
              f"({every}store {coord.store.url if coord.store else settings.store_url})", flush=True)
        stop = install_stop(coord)
        launcher = await start_launcher(coord, lo)
        from .progress import RunProgress

        stale = look_for_stale(coord, ctx)
        # bars on a terminal (as `ajug run`), a line every 10 s in a log
        prog = RunProgress(interval_s=10.0)

        def tick(c: Any) -> None:
            prog.update(c.status())
            if launcher is not None:
                launcher.tick(c)

        try:
            code = await coord.run(on_tick=tick)
        finally:
            if launcher is not None:
                await launcher.close(finished=coord.state == "finished")
        code, _ = await end_of_run(coord, ctx, prog, stop, stale, code)
        return code

    return new_loop_runner()(main())


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("address")
@click.option("-j", "--jobs", type=AT_LEAST_ONE, default=1, show_default=True, help="Worker processes.")
@click.option("--prefetch", type=AT_LEAST_ZERO, default=None, help="Tasks leased ahead of the one running (0: none; default: adapts to how long tasks take).")
@click.option("--connect-timeout", type=SECONDS, default=60.0, show_default=True, help="Seconds to keep trying to reach the coordinator, at start and after losing it.")
@click.option("--store", "store_url", default=None, help="Override the store URL the coordinator announces.")
@click.option("--name", default="", help="Name shown in status.")
@click.option("--max-tasks", type=AT_LEAST_ONE, default=None, help="Exit after this many tasks.")
@click.option("--idle-exit", type=float, default=None, metavar="SECONDS",
              help="Exit after this long without a task (frees a batch job's node).")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the shared token (or set AJUG_TOKEN).")
@click.option("--token", default=None, hidden=True)
@click.option("--tls-ca", default=None, help="CA bundle to verify the coordinator's certificate (enables TLS).")
@click.option("--tls-cert", default=None, help="Client certificate, if the coordinator requires one.")
@click.option("--tls-key", default=None, help="Private key for --tls-cert.")
@click.option("--token-fd", type=int, default=None, hidden=True,
              help="Read the token from this inherited file descriptor (how ajug starts workers).")
@click.option("--announce", type=click.Choice(["all", "connect", "none"]), default="all",
              hidden=True, help="What this worker says: all (connecting, a task count on a "
              "terminal, how it ended), connect, or none (the workers of ajug run).")
@click.option("--resources", default=None, metavar="NAME=AMOUNT,...",
              help="What this host offers to all its -j processes together, e.g. "
              "gpus=2,memory=64GiB,licence=1 (default: its CPUs and memory).")
@click.option("--group", default=None, hidden=True,
              help="The host group whose offer this process shares (set by its supervisor).")
@click.option("--supervised", is_flag=True, hidden=True,
              help="A supervisor replaces this process when it ends (ajug work -j N, ajug run).")
@verbosity_options
def work(address: str, jobs: int, prefetch: int | None, connect_timeout: float, store_url: str | None,
         name: str, max_tasks: int | None, idle_exit: float | None, token_file: str | None,
         token: str | None, tls_ca: str | None, tls_cert: str | None, tls_key: str | None,
         token_fd: int | None, announce: str, resources: str | None, group: str | None,
         supervised: bool) -> int:
    """Run tasks for the coordinator at ADDRESS (HOST:PORT) until it says all is done."""
    host, port = parse_address(address)
    if idle_exit is not None and not idle_exit > 0:
        raise UsageError(f"--idle-exit {idle_exit:g}: must be a positive number of seconds")
    tok = read_token_fd(token_fd) if token_fd is not None else read_token(token, token_file)
    forget_tokens()  # task code, and what it starts, must not find it in the environment
    offer = host_offer(resources, group)  # checked before any process starts
    if jobs > 1:
        args = ["work", address, "-j", "1", "--connect-timeout", str(connect_timeout),
                *child_args(resources, offer["group"])]
        for flag, v in (("--prefetch", prefetch), ("--store", store_url), ("--max-tasks", max_tasks),
                        ("--idle-exit", idle_exit),
                        ("--tls-ca", tls_ca), ("--tls-cert", tls_cert), ("--tls-key", tls_key)):
            if v is not None:
                args += [flag, str(v)]
        from .supervisor import FINISH_GRACE_S, report_death, supervise

        ctx = tls_context(False, tls_cert, tls_key, tls_ca)
        # the first one says when they connect (for all of them); the others say nothing
        says = ["connect" if announce != "none" else "none"] + ["none"] * (jobs - 1)
        rc = supervise([[*args, "--name", f"{name or 'w'}{i}", "--announce", says[i]]
                        for i in range(jobs)],
                       lambda a: spawn_with_token(worker_command(a), tok),
                       report=lambda death: report_death(host, port, tok, ctx, death),
                       finish_grace_s=None if max_tasks is not None else FINISH_GRACE_S)
        if announce != "none":
            click.echo("ajug: interrupted" if rc == 130 else
                       f"ajug: {jobs} worker processes ended (status {rc})" if rc else
                       f"ajug: the coordinator says all is done; {jobs} worker processes ended",
                       err=True)
        return rc
    from .worker import Worker, WorkerOptions

    opts = WorkerOptions(
        host=host,
        port=port,
        token=tok,
        name=name,
        prefetch=prefetch,
        connect_timeout_s=connect_timeout,
        store_url=store_url,
        ssl=tls_context(False, tls_cert, tls_key, tls_ca),
        max_tasks=max_tasks,
        say=(lambda msg: click.echo(f"ajug: {msg}", err=True)) if announce != "none" else None,
        idle_exit_s=idle_exit,
        offer=offer,
        # a task past its timeout ends this process: its supervisor starts another, or it
        # replaces itself
        replace=None if supervised else (lambda: reexec(tok)),
    )
    worker = Worker(opts)
    if announce != "all":
        return worker.run()
    from .progress import TaskCount

    with TaskCount(worker):  # on a terminal: how many tasks it has done, live
        rc = worker.run()
    if rc == 130:
        click.echo("ajug: interrupted", err=True)
    elif max_tasks is not None and worker.ran >= max_tasks:
        click.echo(f"ajug: ran {worker.ran} task(s) (--max-tasks {max_tasks}): exiting", err=True)
    elif worker.idle_exited:
        click.echo(f"ajug: no task for {idle_exit:g} s (--idle-exit): exiting; this worker ran "
                   f"{worker.ran} task(s)", err=True)
    else:
        failed = f", {worker.failed} failed" if worker.failed else ""
        click.echo(f"ajug: the coordinator says all is done; this worker ran {worker.ran} "
                   f"task(s){failed}", err=True)
    return rc


def forked_main(argv: list[str], token: bytes) -> None:
    """What a worker forked by ``ajug run`` runs: ``ajug work ...``, as a spawned one would,
    with the token from the run's memory (``--token-fd``), as a spawned one gets it."""
    main([*argv, "--token-fd", str(token_fd(token))])


@cli.command(context_settings=CONTEXT_SETTINGS, epilog=EXIT_STATUSES)
@click.argument("jugfile")
@click.option("-j", "--jobs", type=AT_LEAST_ONE, default=None, help="Worker processes (default: one per core).")
@click.option("--prefetch", type=AT_LEAST_ZERO, default=None, help="Tasks leased ahead per worker (0: none; default: adapts to how long tasks take).")
@click.option("--port", type=PORT, default=0, help="Loopback port for the workers (default: a free one).")
@click.option("--no-progress", is_flag=True, help="No progress display.")
@click.option("--resources", default=None, metavar="NAME=AMOUNT,...",
              help="What this machine offers its local workers together, e.g. gpus=1 "
              "(default: its CPUs and memory).")
@dashboard_options
@coordinator_options
@launch_options
def run(jugfile: str, jobs: int | None, prefetch: int | None, port: int, no_progress: bool,
        resources: str | None, store_url: str | None, dashboard: int | None,
        dashboard_host: str, **kw: Any) -> int:
    """Run a jugfile: a coordinator and JOBS worker processes over loopback (or, with
    --workers slurm, ..., worker jobs on a cluster)."""
    from .launch import options as launch
    from .localrun import LocalRun, run_local

    lo = launch.pop_launch_options(kw, "run")
    host = "127.0.0.1"
    if lo is not None:
        if jobs is not None:
            raise UsageError("-j starts local workers; with --workers, --job-cpus and --max-jobs "
                             "size the jobs")
        host = launch.listen_host(lo)
        launch.prepare(lo, jugfile, kw)  # the jobs' token file (made now if there is none)
    made = None
    if not (kw["token"] or kw["token_file"] or os.environ.get("AJUG_TOKEN", "").strip()):
        made = secrets.token_hex(16).encode()  # fresh per run, kept in memory
    host_offer(resources, None)  # checked before anything starts
    settings = coordinator_settings(jugfile, store_url, host, port, made_token=made, **kw)
    summary = run_local(LocalRun(
        settings, RunContext(jugfile, store_url, settings.store_url),
        jobs=0 if lo is not None else jobs or os.cpu_count() or 1, prefetch=prefetch,
        progress=not no_progress, dashboard=dashboard, dashboard_host=dashboard_host, launch=lo,
        fork_main=forked_main, resources=resources))
    if summary.reason:
        click.echo(f"ajug: error: {summary.reason}", err=True)
    return summary.code


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("target")
@click.option("--store", "store_url", default=None, help="Store URL (offline: default beside the jugfile).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--watch", is_flag=True, help="Refresh until the run ends.")
@click.option("--interval", type=POSITIVE_SECONDS, default=1.0, show_default=True, help="Seconds between refreshes with --watch.")
@click.option("--failed", is_flag=True, help="Print the tracebacks of failed tasks.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the shared token (or set AJUG_TOKEN; AJUG_READ_TOKEN for read-only).")
@click.option("--token", default=None, hidden=True)
@click.option("--tls-ca", default=None, help="CA bundle to verify the coordinator (enables TLS).")
@click.option("--tls-cert", default=None, help="Client certificate, if the coordinator requires one.")
@click.option("--tls-key", default=None, help="Private key for --tls-cert.")
@verbosity_options
def status(target: str, store_url: str | None, as_json: bool, watch: bool, interval: float,
           failed: bool, token_file: str | None, token: str | None, tls_ca: str | None,
           tls_cert: str | None, tls_key: str | None) -> int:
    """Progress of a run: TARGET is HOST:PORT (live) or a jugfile (offline, from the store)."""
    from rich.console import Console

    from .status import render

    offline = target.endswith(".py") or Path(target).is_file()
    console = Console()
    if offline:
        from .jugfile import default_store_url
        from .status import offline_status

        def fetch() -> dict[str, Any]:
            return offline_status(target, store_url or default_store_url(target), detail=failed)
    else:
        host, port = parse_address(target)
        # a read-only token if we have one, else the full token (asking for full access)
        read_tok = os.environ.get("AJUG_READ_TOKEN", "").strip().encode()
        tok = read_token(token, token_file) or read_tok
        access = "read" if (read_tok and tok == read_tok) else "full"
        ctx = tls_context(False, tls_cert, tls_key, tls_ca)

        def fetch() -> dict[str, Any]:
            return new_loop_runner()(query_status(host, port, tok, ctx, detail=failed,
                                                   access=access))

    if not watch:
        st = fetch()
        if as_json:
            click.echo(json.dumps(st, indent=2, sort_keys=True))
        else:
            render(st, console, failed_tracebacks=failed)
        return 0
    from .watch import watch_live, watch_offline

    if offline:
        return watch_offline(fetch, interval, as_json)
    return watch_live(host, port, tok, ctx, access, failed, interval, as_json, new_loop_runner())


def main(argv: list[str] | None = None) -> None:
    """The ``ajug`` command; exits with its status. A worker forked by ``ajug run`` calls it with
    its ``work ...`` arguments, to run exactly as a spawned one would."""
    argv = sys.argv[1:] if argv is None else argv
    from .jugfile import set_running

    set_running()  # jugfiles ask is_jug_running(), as under jug
    try:
        from .config import default_map_for

        rv = cli.main(args=argv, standalone_mode=False, default_map=default_map_for(cli, argv))
    except click.exceptions.Abort:
        click.echo("ajug: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # one line, as for every other mistake
        where = e.ctx.command_path if e.ctx is not None else "ajug"
        msg = " ".join(e.format_message().split())
        click.echo(f"ajug: error: {msg} (see `{where} --help`)", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except AjugError as e:
        if verbosity():
            traceback.print_exc()
            details = getattr(e, "details", None)
            if details:
                click.echo(details, err=True)
        click.echo(f"ajug: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("ajug: interrupted", err=True)
        sys.exit(130)
    code = rv if isinstance(rv, int) else 0
    from . import jugfile

    if jugfile.big_graph_alive:  # done, and only a million objects left to free: skip that
        atexit._run_exitfuncs()  # what the process asked to run at exit still runs
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


from .commands import register  # noqa: E402

register(cli)
