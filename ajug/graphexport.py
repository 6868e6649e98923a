"""``ajug graph``: the dependency graph as Graphviz dot (tasks of one function in a cluster, or
one node per function with counted edges) or as JSON (functions, edges, and every task with its
dependencies), each task or function marked done or not from the store."""

from __future__ import annotations

from typing import Any

from .offline import Offline


def _dot_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def graph_json(off: Offline, by_function: bool) -> dict[str, Any]:
    g = off.graph
    funcs = [{"name": f.name, "src": f.src, "tasks": 0, "done": 0} for f in g.functions]
    for i, f in enumerate(g.fn):
        funcs[f]["tasks"] += 1
        funcs[f]["done"] += bool(off.done[i])
    edges: dict[tuple[int, int], int] = {}
    for i in range(len(g)):
        for j in g.deps(i):
            e = (g.fn[j], g.fn[i])
            edges[e] = edges.get(e, 0) + 1
    out: dict[str, Any] = {
        "jugfile": str(off.loaded.path),
        "store": off.store.url,
        "partial": off.partial,
        "functions": funcs,
        "edges": [{"from": g.functions[a].name, "to": g.functions[b].name, "count": n}
                  for (a, b), n in edges.items()],
    }
    if g.opt_of is not None:  # options (resources, timeout, retries, priority): per function
        seen: list[set[int]] = [set() for _ in g.functions]  # when all its tasks share them
        for i, f in enumerate(g.fn):
            seen[f].add(g.opt_of[i])
        for f, ids in zip(funcs, seen):
            if len(ids) == 1 and (o := g.options[next(iter(ids))].to_json()):
                f["options"] = o
    if not by_function:
        out["tasks"] = [{"key": k, "function": g.functions[g.fn[i]].name, "done": off.done[i],
                         "deps": [g.keys[j] for j in g.deps(i)]} for i, k in enumerate(g.keys)]
        if g.opt_of is not None:
            for i, t in enumerate(out["tasks"]):
                if o := g.opts(i).to_json():
                    t["options"] = o
    return out


def graph_dot(off: Offline, by_function: bool) -> str:
    """Graphviz: one cluster per function (``by_function``: one node per function)."""
    g = off.graph
    data = graph_json(off, by_function=True)
    lines = ["digraph ajug {", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="monospace", fontsize=10];']
    if by_function:
        for f in data["functions"]:
            color = "#c8e6c9" if f["done"] == f["tasks"] else "#ffffff"
            label = f"{f['name']}\\n{f['done']}/{f['tasks']} done"
            lines.append(f"  {_dot_str(f['name'])} [label=\"{label}\", fillcolor=\"{color}\"];")
        for e in data["edges"]:
            lines.append(f"  {_dot_str(e['from'])} -> {_dot_str(e['to'])} [label=\"{e['count']}\"];")
        lines.append("}")
        return "\n".join(lines) + "\n"
    members: dict[int, list[int]] = {}
    for i, f in enumerate(g.fn):
        members.setdefault(f, []).append(i)
    for fid, idxs in members.items():
        f = g.functions[fid]
        lines.append(f"  subgraph cluster_{fid} {{")
        lines.append(f"    label={_dot_str(f'{f.name} ({len(idxs)})')};")
        short = f.name.rpartition(".")[2]
        for i in idxs:
            color = "#c8e6c9" if off.done[i] else "#ffffff"
            lines.append(f"    {_dot_str(g.keys[i])} [label=\"{short}\\n{g.keys[i][:10]}\", "
                         f"fillcolor=\"{color}\"];")
        lines.append("  }")
    for i in range(len(g)):
        for j in g.deps(i):
            lines.append(f"  {_dot_str(g.keys[j])} -> {_dot_str(g.keys[i])};")
    lines.append("}")
    return "\n".join(lines) + "\n"
