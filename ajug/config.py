"""Layered settings: command-line flags > ``AJUG_*`` environment > a config file > defaults.

The config file is ``ajug.toml`` beside the jugfile (or in the current directory for commands
without one), keys at the top level; else the ``[tool.ajug]`` table of the nearest
``pyproject.toml``, beside the jugfile or in a parent directory (the nearest one marks the
project, as for ruff: ajug looks no further up even if it has no such table). A key is an option's long name
(``lease-ttl``, ``store``, ``jobs``; ``lease_ttl`` works too) and applies to every command that
has that option; a table named after a command (``[tool.ajug.work]``, ``[work]`` in ajug.toml)
applies to that command only and wins. Relative paths in a file (``store``, ``token-file``,
``tls-*``) are relative to the file. The environment works the same way: ``AJUG_LEASE_TTL=60``
for every command, ``AJUG_WORK_JOBS=8`` for one.

The result is a click ``default_map``: flags given on the command line still win, and
``ctx.get_parameter_source`` tells them apart. Tokens are never read from a config file (a
file in a repository is no place for one): use ``token-file`` or ``AJUG_TOKEN``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .errors import UsageError

ENV_PREFIX = "AJUG_"
#: Options never taken from a file or the environment through the default map.
NOT_SETTABLE = {"help", "version", "token", "verbose", "quiet"}
#: Settings holding a path, resolved relative to the config file that sets them.
PATH_KEYS = {"store_url", "token_file", "read_token_file", "tls_cert", "tls_key", "tls_ca"}
#: Settings that a top-level key or ``AJUG_<KEY>`` does not reach, only the command's own table
#: or ``AJUG_<COMMAND>_<KEY>``: ``work --store`` overrides the store the coordinator announces
#: (a shared ``store`` would make workers write where their coordinator does not look), and
#: ``run --port`` is a loopback port that must not follow ``serve``'s.
COMMAND_ONLY = {("work", "store_url"), ("run", "port")}
#: The tokens that ``ajug config`` shows (masked) and where each is read from.
TOKEN_ENV = {"token": "AJUG_TOKEN", "read-token": "AJUG_READ_TOKEN"}
#: Arguments that name a jugfile (for ``status``/``check``/``sleep-until``: when it is a file).
JUGFILE_ARGS = ("jugfile", "target", "args")


@dataclass(frozen=True)
class Key:
    """One settable option of one command, and the names it may be given by."""

    command: str
    param: str  # click's parameter name (``store_url``)
    name: str  # the name shown and documented (``store``)
    invert: bool = False  # set through a secondary flag name (``fail-fast`` for ``keep_going``)
    multiple: bool = False  # a repeatable option: a list, or one string of lines


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UsageError(
                f"{path} needs a TOML reader: use Python 3.11+ or `pip install tomli`"
            ) from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML: {e}") from None


def find_config(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The config file that applies in ``directory`` and its ajug table (see module docstring)."""
    directory = directory.resolve()
    own = directory / "ajug.toml"
    if own.is_file():
        return own, _load_toml(own)
    for d in (directory, *directory.parents):
        py = d / "pyproject.toml"
        if py.is_file():  # the nearest one marks the project: look no further up
            table = _load_toml(py).get("tool", {}).get("ajug")
            if table is None:
                return None
            if not isinstance(table, dict):
                raise UsageError(f"{py}: [tool.ajug] must be a table")
            return py, table
    return None


def _norm(name: str) -> str:
    return name.lstrip("-").replace("-", "_").lower()


def settable_keys(cli: click.Group) -> dict[str, dict[str, Key]]:
    """command -> {normalised name -> Key} for every option a file or env var may set."""
    out: dict[str, dict[str, Key]] = {}
    for cname, cmd in cli.commands.items():
        keys: dict[str, Key] = {}
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.name in NOT_SETTABLE or p.hidden:
                continue
            longs = [o for o in p.opts if o.startswith("--")]
            shown = longs[0][2:] if longs else p.name or ""
            many = bool(getattr(p, "multiple", False))
            keys[_norm(p.name or "")] = Key(cname, p.name or "", shown, multiple=many)
            for o in longs:
                keys[_norm(o)] = Key(cname, p.name or "", shown, multiple=many)
            for o in p.secondary_opts:
                if o.startswith("--"):
                    keys[_norm(o)] = Key(cname, p.name or "", o[2:], invert=True)
        out[cname] = keys
    return out


def _set(layer: dict[str, dict[str, tuple[Any, str]]], key: Key, value: Any, source: str,
         base: Path | None) -> None:
    if key.invert:
        value = not _as_bool(value, key, source)
    if key.multiple and isinstance(value, str):  # AJUG_JOB_SETUP="line 1<newline>line 2"
        value = [line for line in value.splitlines() if line.strip()]
    if base is not None and key.param in PATH_KEYS and isinstance(value, str) and value:
        if key.param != "store_url" or not _has_scheme(value):
            value = str((base / os.path.expanduser(value)).resolve())
    layer.setdefault(key.command, {})[key.param] = (value, source)


def _has_scheme(url: str) -> bool:
    scheme, sep, _ = url.partition(":")
    return bool(sep) and len(scheme) > 1


def _as_bool(value: Any, key: Key, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise UsageError(f"{key.name} from {source}: {value!r} is not true or false")


def file_layer(cli: click.Group, path: Path, table: Mapping[str, Any]
               ) -> dict[str, dict[str, tuple[Any, str]]]:
    """The settings a config file gives each command, with their source."""
    keys = settable_keys(cli)
    layer: dict[str, dict[str, tuple[Any, str]]] = {}
    where = f"{path.name} ({path})"
    if "token" in table or "read-token" in table or "read_token" in table:
        raise UsageError(f"{path}: do not put a token in a config file; set token-file = PATH "
                         "or the AJUG_TOKEN environment variable")
    known = sorted({k.name for ks in keys.values() for k in ks.values()})
    specific: list[tuple[str, Mapping[str, Any]]] = []
    for name, value in table.items():
        if isinstance(value, dict) and name in keys:
            specific.append((name, value))
            continue
        hits = [ks[_norm(name)] for ks in keys.values() if _norm(name) in ks]
        if not hits:
            raise UsageError(f"{path}: unknown setting {name!r}; known: {', '.join(known)} "
                             f"(or a table per command: {', '.join(sorted(keys))})")
        for k in hits:
            if (k.command, k.param) not in COMMAND_ONLY:
                _set(layer, k, value, where, path.parent)
    for cname, sub in specific:  # per-command tables win over top-level keys
        for name, value in sub.items():
            found = keys[cname].get(_norm(name))
            if found is None:
                raise UsageError(f"{path}: `ajug {cname}` has no setting {name!r}; it has: "
                                 f"{', '.join(sorted({x.name for x in keys[cname].values()}))}")
            _set(layer, found, value, f"{where} [{cname}]", path.parent)
    return layer


def env_layer(cli: click.Group, environ: Mapping[str, str]) -> dict[str, dict[str, tuple[Any, str]]]:
    """Settings from ``AJUG_<KEY>`` (every command) and ``AJUG_<COMMAND>_<KEY>`` (one command).

    Unknown ``AJUG_*`` variables are ignored: other tools and tests use the prefix too.
    """
    layer: dict[str, dict[str, tuple[Any, str]]] = {}
    keys = settable_keys(cli)
    for cname, ks in keys.items():
        cprefix = ENV_PREFIX + cname.upper().replace("-", "_") + "_"
        for norm, k in ks.items():
            general = ENV_PREFIX + norm.upper()
            if general in environ and (cname, k.param) not in COMMAND_ONLY:
                _set(layer, k, environ[general], f"env {general}", None)
            if cprefix + norm.upper() in environ:  # the command's own variable wins
                _set(layer, k, environ[cprefix + norm.upper()], f"env {cprefix + norm.upper()}", None)
    return layer


def _check_types(cli: click.Group, merged: dict[str, dict[str, tuple[Any, str]]],
                 only: str | None) -> None:
    """Refuse a bad value for the command about to run, naming where it came from (click would
    not say); values for other commands wait until those run."""
    for cname, values in merged.items():
        if only is not None and cname != only:
            continue
        params = {p.name: p for p in cli.commands[cname].params}
        for pname, (value, source) in values.items():
            p = params[pname]
            try:
                if isinstance(p, click.Option) and p.count:
                    int(value)
                elif value is not None:
                    p.type.convert(value, p, None)
            except (click.BadParameter, ValueError, TypeError) as e:
                msg = e.format_message() if isinstance(e, click.ClickException) else str(e)
                raise UsageError(f"setting {pname.replace('_', '-')} = {value!r} from {source}: "
                                 f"{msg}") from None


def layered(cli: click.Group, directory: Path, environ: Mapping[str, str] | None = None,
            command: str | None = None) -> dict[str, dict[str, tuple[Any, str]]]:
    """command -> {param -> (value, source)} from the file and the environment (env wins)."""
    environ = os.environ if environ is None else environ
    merged: dict[str, dict[str, tuple[Any, str]]] = {}
    found = find_config(directory)
    layers = [env_layer(cli, environ)]
    if found is not None:
        layers.insert(0, file_layer(cli, *found))
    for layer in layers:
        for cname, values in layer.items():
            merged.setdefault(cname, {}).update(values)
    _check_types(cli, merged, command)
    return merged


def jugfile_dir(cli: click.Group, argv: list[str]) -> tuple[str | None, Path]:
    """The command that ``argv`` runs and the directory its config comes from: the jugfile's,
    or the current directory for commands without one (``work``, ``status HOST:PORT``)."""
    cname = None
    rest: list[str] = []
    for i, a in enumerate(argv):
        if a == "--":
            break
        if not a.startswith("-"):
            cname, rest = a, argv[i + 1 :]
            break
    cmd = cli.commands.get(cname or "")
    if cmd is None:
        return cname, Path.cwd()
    try:
        ctx = cmd.make_context(cname, list(rest), resilient_parsing=True)
    except (click.ClickException, click.exceptions.Exit):
        return cname, Path.cwd()
    for name in JUGFILE_ARGS:
        v = ctx.params.get(name)
        if isinstance(v, tuple):  # `ajug config [JUGFILE] ...`
            v = v[0] if v else None
        if isinstance(v, str) and (v.endswith(".py") or Path(v).is_file()):
            return cname, Path(v).resolve().parent
    return cname, Path.cwd()


def default_map_for(cli: click.Group, argv: list[str],
                    environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The click ``default_map`` for this command line (``cli.main(default_map=...)``)."""
    cname, directory = jugfile_dir(cli, argv)
    merged = layered(cli, directory, environ, cname or "")
    return {c: {p: v for p, (v, _src) in values.items()} for c, values in merged.items()}


# -- `ajug config` ------------------------------------------------------------------------------
def mask(name: str, value: Any) -> Any:
    """Hide secrets: tokens entirely, a password inside a redis URL."""
    if value is None or value == "":
        return value
    if "token" in name and "file" not in name:
        return "********"
    if isinstance(value, str) and "://" in value and "@" in value:
        scheme, _, rest = value.partition("://")
        cred, _, host = rest.rpartition("@")
        user = cred.partition(":")[0]
        return f"{scheme}://{user}:********@{host}" if cred else value
    return value


def effective(cli: click.Group, command: str, args: list[str], directory: Path,
              environ: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """What ``ajug COMMAND ARGS`` would use: key -> {value, source}, secrets masked.

    Sources: ``flag``, ``env AJUG_X``, ``<file> (<path>)``, ``default``.
    """
    environ = os.environ if environ is None else environ
    cmd = cli.commands.get(command)
    if cmd is None:
        raise UsageError(f"no command {command!r}: one of {', '.join(sorted(cli.commands))}")
    merged = layered(cli, directory, environ, command)
    values = merged.get(command, {})
    dmap = {p: v for p, (v, _s) in values.items()}
    args = list(args)
    try:
        seen = cmd.make_context(command, list(args), resilient_parsing=True).params
    except click.ClickException as e:
        raise UsageError(f"ajug {command} {' '.join(args)}: {e.format_message()}") from None
    for p in cmd.params:  # placeholders for missing arguments, so that the parser accepts args
        if isinstance(p, click.Argument) and p.required and seen.get(p.name or "") is None:
            args.append("HOST:PORT" if p.name == "address" else "jugfile.py")
    try:
        ctx = cmd.make_context(command, args, default_map=dmap)
    except click.ClickException as e:
        raise UsageError(f"ajug {command} {' '.join(args)}: {e.format_message()}") from None
    out: dict[str, dict[str, Any]] = {}
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.name in NOT_SETTABLE or p.hidden:
            continue
        src = ctx.get_parameter_source(p.name or "")
        longs = [o for o in p.opts if o.startswith("--")]
        name = longs[0][2:] if longs else p.name or ""
        if src == click.core.ParameterSource.COMMANDLINE:
            source = "flag"
        elif src == click.core.ParameterSource.DEFAULT_MAP:
            source = values[p.name or ""][1]
        else:
            source = "default"
        out[name] = {"value": mask(name, ctx.params.get(p.name or "")), "source": source}
    has_token = any(p.name == "token_file" for p in cmd.params)
    if has_token:
        for name, var in TOKEN_ENV.items():
            if name == "read-token" and not any(p.name == "read_token_file" for p in cmd.params):
                continue
            file_key = "token-file" if name == "token" else "read-token-file"
            if out.get(file_key, {}).get("value"):
                out[name] = {"value": "********", "source": f"{file_key} {out[file_key]['value']}"}
            elif environ.get(var, "").strip():
                out[name] = {"value": "********", "source": f"env {var}"}
            else:
                out[name] = {"value": None, "source": "not set"}
    return out


def config_file_for(directory: Path) -> Path | None:
    found = find_config(directory)
    return found[0] if found else None

