"""Jug's other commands: invalidate, cleanup, check, sleep-until, shell, graph, and config.

Each works offline on a jugfile and its store (``--store URL``, default: the file store beside
the jugfile, as jug's ``--jugdir``); ``check`` and ``sleep-until`` also take ``HOST:PORT`` to
ask a running coordinator, and ``invalidate --coordinator HOST:PORT`` tells one to run again
what it removed. The graph logic lives in ``ajug.offline``; this module parses, prints, exits.

Exit statuses: 0 success (``check``: all done), 1 "not yet" (``check``, ``sleep-until
--timeout``), 2 a usage or ajug error (printed as one line by ``ajug.cli.main``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import click

from .access import read_token
from .cliparams import (
    CONTEXT_SETTINGS,
    POSITIVE_SECONDS,
    SECONDS,
    client_options,
    parse_address,
    tls_context,
    verbosity_options,
)
from .errors import ConnectError, StoreLocked, UsageError
from .failures import clear_records
from .graphexport import graph_dot, graph_json
from .offline import (
    Offline,
    count_by_function,
    downstream,
    open_offline,
    orphans,
    remove,
    result_bytes,
    select,
    stale_tasks,
)
from .protocol.client import Remote

log = logging.getLogger("ajug")

#: ``sleep-until``: seconds between two looks at the store or the coordinator.
SLEEP_INTERVAL_S = 2.0
#: ``check --verify`` asks the store about this many results at a time.
VERIFY_BATCH = 1000


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _is_jugfile(target: str) -> bool:
    return target.endswith(".py") or Path(target).is_file()


def store_option(f: Any) -> Any:
    return click.option(
        "--store", "store_url", default=None, metavar="URL",
        help="Store URL (default: <jugfile stem>.ajugdata beside the jugfile, as jug's --jugdir).",
    )(f)


def _remote(address: str, kw: dict[str, Any], access: str = "read") -> Remote:
    """The coordinator at ADDRESS, reached with the command's token and TLS options: read-only
    with ``AJUG_READ_TOKEN`` unless full access is asked for or a full token is given."""
    host, port = parse_address(address)
    tok = read_token(kw.get("token"), kw.get("token_file"))
    read_tok = read_token(None, None, "AJUG_READ_TOKEN")
    full = access == "full" or not read_tok or bool(tok)
    ctx = tls_context(False, kw.get("tls_cert"), kw.get("tls_key"), kw.get("tls_ca"))
    return Remote(host, port, tok if full else read_tok, "full" if full else "read", ctx)


def _counts_table(counts: dict[str, int]) -> None:
    width = max([len(str(n)) for n in counts.values()] + [7])
    click.echo(f"{'results':>{width}}  function")
    for name, n in sorted(counts.items()):
        click.echo(f"{n:>{width}}  {name}")


def _warn_if_served(off: Offline, what: str) -> None:
    """A coordinator serving this store keeps its own idea of what is done: say so."""
    lock = off.store.owner_lock(ttl_s=10.0)
    try:
        lock.acquire()
    except StoreLocked as e:
        log.warning("%s; it will not %s: pass --coordinator HOST:PORT to tell it", e, what)
        return
    lock.release()


# -- invalidate ---------------------------------------------------------------------------------
@click.command()
@click.argument("jugfile")
@store_option
@click.option("--target", "targets", multiple=True, metavar="NAME",
              help="A function (module.name, name, or a glob) or a task identity prefix; repeatable.")
@click.option("--stale", is_flag=True, help="Results whose function's source changed since they were computed.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--keys", "list_keys", is_flag=True, help="Also list each result's identity.")
@click.option("--coordinator", default=None, metavar="HOST:PORT",
              help="A running coordinator to tell: it runs the tasks again.")
@client_options
def invalidate(jugfile: str, store_url: str | None, targets: tuple[str, ...], stale: bool,
               dry_run: bool, list_keys: bool, coordinator: str | None, **kw: Any) -> int:
    """Remove the results of some tasks and of everything downstream of them."""
    if not targets and not stale:
        raise UsageError("say what to invalidate: --target NAME (a function, or a task identity "
                         "prefix) or --stale")
    off = open_offline(jugfile, store_url)
    try:
        g = off.graph
        seeds = select(g, targets)
        if stale:
            seeds.update(stale_tasks(g, off.store, off.done))
        hit = downstream(g, seeds)
        gone = [i for i in hit if off.done[i]]
        keys = [g.keys[i] for i in gone]
        if gone:
            _counts_table(count_by_function(g, gone))
        if list_keys:
            for i in gone:
                click.echo(f"{g.keys[i]}  {g.functions[g.fn[i]].name}")
        if off.partial:
            log.warning("%s stops at a barrier whose inputs are not all stored: tasks after it "
                        "were not seen, and their results (if any) stay", Path(jugfile).name)
        if dry_run:
            click.echo(f"ajug: would remove {len(keys)} result(s) ({len(hit)} task(s) "
                       "affected); nothing removed (--dry-run)")
            return 0
        if keys and coordinator is None:
            _warn_if_served(off, "run them again")
        n = remove(off.store, keys)
        clear_records(off.store, [g.keys[i] for i in hit])  # their failures are history too
        click.echo(f"ajug: removed {n} result(s) ({len(hit)} task(s) affected)")
        if coordinator is not None:
            _remote(coordinator, kw, access="full").invalidate([g.keys[i] for i in hit])
            click.echo(f"ajug: the coordinator at {coordinator} runs them again")
        return 0
    finally:
        off.close()


# -- cleanup ------------------------------------------------------------------------------------
@click.command()
@click.argument("jugfile")
@store_option
@click.option("--dry-run", is_flag=True, help="Say what would be removed and freed; remove nothing.")
@click.option("--partial", is_flag=True,
              help="When the jugfile stops at a barrier, keep only the tasks before it (jug's behaviour).")
def cleanup(jugfile: str, store_url: str | None, dry_run: bool, partial: bool) -> int:
    """Remove results no task of the jugfile owns, stray temporary files and an expired lock."""
    off = open_offline(jugfile, store_url)
    lock = None
    try:
        if off.partial and not partial:
            raise UsageError(
                f"{Path(jugfile).name} stops at a barrier whose inputs are not all stored, so "
                "the tasks after it are unknown and cleanup could remove results they need: "
                "run it first (ajug run), or pass --partial to keep only the tasks before it"
            )
        if not dry_run:  # as a coordinator would: none may serve the store meanwhile
            lock = off.store.owner_lock(ttl_s=60.0)
            lock.acquire()  # takes over (and so removes) an expired lock of a dead coordinator
        stray = orphans(off.store, off.graph)
        result_b = result_bytes(off.store, stray)
        tmp_b = off.store.cleanup(dry_run=dry_run)
        if not dry_run:
            remove(off.store, stray)
        verb = "would remove" if dry_run else "removed"
        if off.partial:
            click.echo("ajug: counting only the tasks before the barrier (--partial)")
        click.echo(f"ajug: {verb} {len(stray)} result(s) that no task owns ({_human(result_b)}) "
                   f"and {_human(tmp_b)} of temporary files")
        total = result_b + tmp_b
        click.echo(f"ajug: {'would free' if dry_run else 'freed'} {total} bytes ({_human(total)})")
        return 0
    finally:
        if lock is not None:
            lock.release()
        off.close()


# -- check, sleep-until -------------------------------------------------------------------------
def _remote_all_done(st: dict[str, Any]) -> bool:
    return st["totals"].get("done", 0) == st["tasks"] and not st.get("barrier")


@click.command()
@click.argument("target")
@store_option
@click.option("--verify", is_flag=True,
              help="Read every stored result whole and check its checksum; list the damaged ones "
                   "and set them aside (the next run computes them again). Needs the jugfile.")
@client_options
def check(target: str, store_url: str | None, verify: bool, **kw: Any) -> int:
    """Exit 0 when every task of TARGET (a jugfile, or HOST:PORT) is done, 1 otherwise."""
    if verify:
        if not _is_jugfile(target):
            raise UsageError("--verify reads the store itself: give the jugfile (and --store "
                             "URL), not a coordinator's address")
        return _verify(target, store_url)
    if not _is_jugfile(target):
        st = _remote(target, kw).status()
        ok = _remote_all_done(st)
        click.echo(f"ajug: {st['totals'].get('done', 0)}/{st['tasks']} tasks done"
                   f"{' (more follow a barrier)' if st.get('barrier') else ''}")
        return 0 if ok else 1
    off = open_offline(target, store_url)
    try:
        n = sum(off.done)
        click.echo(f"ajug: {n}/{len(off.graph)} tasks done"
                   f"{' (more follow a barrier)' if off.partial else ''}")
        return 0 if n == len(off.graph) and not off.partial else 1
    finally:
        off.close()


def _verify(jugfile: str, store_url: str | None) -> int:
    """``check --verify``: every result of the graph that is in the store, read whole."""
    off = open_offline(jugfile, store_url)
    try:
        g = off.graph
        present = [i for i, e in enumerate(off.store.exists(g.keys)) if e]
        damaged = 0
        for b in range(0, len(present), VERIFY_BATCH):
            batch = present[b : b + VERIFY_BATCH]
            for i, why in zip(batch, off.store.verify([g.keys[i] for i in batch], set_aside=True)):
                if why is not None:
                    damaged += 1
                    click.echo(f"ajug: damaged: {g.keys[i]} {g.functions[g.fn[i]].name}: {why}")
        n = len(present) - damaged
        click.echo(f"ajug: {n}/{len(g)} tasks done; {len(present)} stored result(s) read whole, "
                   f"{damaged} damaged" + (" (set aside: the next run computes them again)"
                                           if damaged else ""))
        return 0 if n == len(g) and not off.partial else 1
    finally:
        off.close()


@click.command("sleep-until")
@click.argument("target")
@store_option
@click.option("--interval", type=POSITIVE_SECONDS, default=SLEEP_INTERVAL_S, show_default=True,
              help="Seconds between two looks.")
@click.option("--timeout", type=SECONDS, default=None, help="Give up (exit 1) after this many seconds.")
@client_options
def sleep_until(target: str, store_url: str | None, interval: float, timeout: float | None,
                **kw: Any) -> int:
    """Wait until every task of TARGET (a jugfile, or HOST:PORT) is done."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def expired() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    if not _is_jugfile(target):
        return _sleep_remote(_remote(target, kw), interval, expired)
    off = open_offline(target, store_url)
    try:
        while True:
            g = off.graph
            missing = [k for k, d in zip(g.keys, off.done) if not d]
            while missing:
                if expired():
                    click.echo(f"ajug: timed out with {len(g) - len(missing)}/{len(g)} tasks done")
                    return 1
                time.sleep(interval)
                present = off.store.exists(missing)
                missing = [k for k, e in zip(missing, present) if not e]
            if not off.partial:
                click.echo(f"ajug: all {len(g)} tasks done")
                return 0
            off.close()  # past the barrier: the jugfile defines more tasks now
            off = open_offline(target, store_url)
            if off.partial and all(off.done) and not expired():
                time.sleep(interval)
    finally:
        off.close()


def _sleep_remote(remote: Remote, interval: float, expired: Callable[[], bool]) -> int:
    last: dict[str, Any] | None = None
    while True:
        try:
            st = remote.status()
        except ConnectError:
            if last is None:
                raise
            done = _remote_all_done(last)
            click.echo(f"ajug: the coordinator stopped; last seen {last['totals'].get('done', 0)}"
                       f"/{last['tasks']} tasks done")
            return 0 if done else 1
        last = st
        if st["state"] == "finished" or _remote_all_done(st):
            click.echo(f"ajug: {st['totals'].get('done', 0)}/{st['tasks']} tasks done")
            return 0 if _remote_all_done(st) else 1
        if expired():
            click.echo(f"ajug: timed out with {st['totals'].get('done', 0)}/{st['tasks']} tasks done")
            return 1
        time.sleep(interval)


# -- shell --------------------------------------------------------------------------------------
@click.command()
@click.argument("jugfile")
@store_option
@click.option("--plain", is_flag=True, help="The standard Python console even if IPython is installed.")
def shell(jugfile: str, store_url: str | None, plain: bool) -> int:
    """An interactive Python with the jugfile's names, `value`, `store`, `tasks`, `invalidate`."""
    from .shell import shell_namespace, start_shell

    off = open_offline(jugfile, store_url)
    try:
        ns = shell_namespace(off, jugfile, store_url)
        banner = (f"ajug shell: {Path(jugfile).name}: {len(off.graph)} tasks, {sum(off.done)} "
                  f"done (store {off.store.url})\n"
                  "names: the jugfile's, value(t), store, tasks, invalidate(t | name | prefix)")
        start_shell(ns, banner, plain)
        return 0
    finally:
        off.close()


# -- graph --------------------------------------------------------------------------------------
@click.command()
@click.argument("jugfile")
@store_option
@click.option("--format", "fmt", type=click.Choice(["dot", "json"]), default="dot", show_default=True,
              help="Graphviz dot, or JSON (every task with its dependencies).")
@click.option("--by-function", is_flag=True, help="One node per function, edges counted (for large graphs).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file instead of standard output.")
def graph(jugfile: str, store_url: str | None, fmt: str, by_function: bool, output: str | None) -> int:
    """The dependency graph, tasks of one function grouped: Graphviz dot, or JSON."""
    off = open_offline(jugfile, store_url)
    try:
        text = (graph_dot(off, by_function) if fmt == "dot"
                else json.dumps(graph_json(off, by_function), indent=1) + "\n")
    finally:
        off.close()
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)
    return 0


# -- config -------------------------------------------------------------------------------------
@click.command("config", context_settings={"ignore_unknown_options": True,
                                           "allow_interspersed_args": False})
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def config_cmd(as_json: bool, args: tuple[str, ...]) -> int:
    """Print the settings a command would use and where each comes from: ajug config [JUGFILE]
    [COMMAND [FLAGS...]]. Precedence: flags, AJUG_* variables, ajug.toml or [tool.ajug], defaults."""
    from .config import config_file_for, effective

    cli = cast(click.Group, click.get_current_context().find_root().command)
    rest = list(args)
    jugfile = rest.pop(0) if rest and _is_jugfile(rest[0]) else None
    directory = Path(jugfile).resolve().parent if jugfile else Path.cwd()
    if rest and rest[0] not in cli.commands:
        raise UsageError(f"no command {rest[0]!r}: one of {', '.join(sorted(cli.commands))}")
    names = [rest.pop(0)] if rest else sorted(c for c in cli.commands if c != "config")
    if "--json" in rest and not any("--json" in getattr(p, "opts", ())
                                    for n in names for p in cli.commands[n].params):
        rest.remove("--json")  # `ajug config J serve --json` means config's own --json
        as_json = True
    out: dict[str, Any] = {}
    for name in names:
        cmd_args = list(rest)
        takes_file = any(isinstance(p, click.Argument) and p.name in ("jugfile", "target")
                         for p in cli.commands[name].params)
        if jugfile and takes_file:
            cmd_args.insert(0, jugfile)
        out[name] = effective(cli, name, cmd_args, directory)
    cfg = config_file_for(directory)
    if as_json:
        click.echo(json.dumps({"file": str(cfg) if cfg else None, "settings": out}, indent=2,
                              sort_keys=True, default=str))
        return 0
    click.echo(f"# config file: {cfg if cfg else 'none (ajug.toml or [tool.ajug] in pyproject.toml)'}")
    for name, settings in out.items():
        click.echo(f"[{name}]")
        for key, s in settings.items():
            v = s["value"]
            if isinstance(v, (list, tuple)) and v:  # a repeatable option (job-setup)
                v = list(v)
            shown = json.dumps(v) if isinstance(v, (str, int, float, bool, list)) else "(unset)"
            click.echo(f"{key} = {shown}  # {s['source']}")
    return 0


def register(cli: click.Group) -> None:
    """Add this module's commands to the ``ajug`` group, each with ``-h`` and ``-v``/``-q``
    after the command name too."""
    for cmd in (invalidate, cleanup, check, sleep_until, shell, graph, config_cmd):
        cmd.context_settings = {**CONTEXT_SETTINGS, **cmd.context_settings}
        if cmd is not config_cmd:  # config passes what follows to the command it describes
            verbosity_options(cmd)
        cli.add_command(cmd)
