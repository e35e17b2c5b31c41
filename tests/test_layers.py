"""The shape of gchat/: imports point down only, and the pure core is pure.

Every `import` and `from ... import` in gchat/, at module level or inside
a function, is read with ast (nothing is imported), and resolved to the
gchat module it names.  docs/how-it-works.md explains the layers.
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gchat"

# Each module's layer; a module may import its own layer or lower ones,
# never a higher one.  A new module must be placed here (test_every_module_has_a_layer).
LAYERS = {
    # Leaves: the hub's vocabulary, every user-visible text, the options, logging.
    "gchat": 0,
    "gchat.events": 0,
    "gchat.protocol": 0,
    "gchat.config": 0,
    "gchat.logs": 0,
    # The pure core: no sockets, no gevent, no clock.
    "gchat.fanout": 1,
    "gchat.outbox": 1,
    "gchat.room": 1,
    "gchat.rooms": 1,
    "gchat.chat": 1,
    "gchat.cluster": 1,
    "gchat.timeouts": 1,
    "gchat.proxy_header": 1,
    "gchat.bus.entry": 1,
    "gchat.bus.room_log": 1,
    "gchat.sessions": 1,
    "gchat.auth": 1,
    "gchat.operators": 1,
    "gchat.api_rules": 1,
    # The broadcaster greenlet, the one owner of the chat's state.
    "gchat.hub": 2,
    # Connections and the bus's I/O: they talk to the hub through events.
    "gchat.transport": 3,
    "gchat.transport.base": 3,
    "gchat.transport.tls": 3,
    "gchat.transport.websocket": 3,
    "gchat.transport.http": 3,
    "gchat.transport.proxy": 3,
    "gchat.transport.api": 3,
    "gchat.bus": 3,
    "gchat.bus.room_bus": 3,
    "gchat.bus.room_stream": 3,
    "gchat.bus.room_feed": 3,
    "gchat.bus.room_publisher": 3,
    "gchat.bus.control": 3,
    "gchat.bus.pipelines": 3,
    "gchat.bus.direct_calls": 3,
    # The edges the server plugs in.
    "gchat.metrics": 4,
    "gchat.systemd": 4,
    "gchat.config_file": 4,
    # The assembly, then the entry points.
    "gchat.server": 5,
    "gchat.cli": 6,
    "gchat.workers": 6,
    "gchat.__main__": 6,
    "gchat.options_doc": 6,
}

PURE = [name for name, layer in LAYERS.items() if layer <= 1 and name != "gchat"]
# What a pure module never imports: I/O, the event loop, the clock.
IMPURE = {
    "gevent",
    "greenlet",
    "socket",
    "ssl",
    "select",
    "selectors",
    "time",
    "redis",
    "h11",
    "wsproto",
    "os",
    "subprocess",
    "threading",
    "asyncio",
    "prometheus_client",
}

# Rules of DESIGN.md beyond the layers' order.
FORBIDDEN = {
    # A transport may import the connection base and the events, never the
    # server, the hub or the chat's state.
    "gchat.transport.": {
        "gchat.server",
        "gchat.hub",
        "gchat.room",
        "gchat.rooms",
        "gchat.chat",
        "gchat.cluster",
    },
    # The bus may import events, entry and protocol, never the hub or the
    # cluster's rules.
    "gchat.bus.": {"gchat.hub", "gchat.cluster", "gchat.chat", "gchat.server"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict:
    """module name -> its parsed source, for every .py file in gchat/."""
    return {
        module_name(path): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def imported(name: str, tree: ast.AST, known: set) -> dict:
    """The modules name imports: module -> (line, top-level package)."""
    package = (
        name
        if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()
        else name.rpartition(".")[0]
    )
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.setdefault(target, node.lineno)
            for alias in node.names:  # `from gchat import events` imports a module
                if f"{target}.{alias.name}" in known:
                    found.setdefault(f"{target}.{alias.name}", node.lineno)
    return found


def graph() -> dict:
    """gchat module -> {gchat module it imports: line}."""
    trees = modules()
    known = set(trees)
    edges = {}
    for name, tree in trees.items():
        edges[name] = {
            target: line
            for target, line in imported(name, tree, known).items()
            if target in known and target != name
        }
    return edges


def find_cycle(edges: dict):
    """One import cycle as a list of modules (first == last), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(edges, WHITE)
    stack = []

    def visit(node):
        colour[node] = GREY
        stack.append(node)
        for target in sorted(edges[node]):
            if colour[target] == GREY:
                return stack[stack.index(target) :] + [target]
            if colour[target] == WHITE:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(edges):
        if colour[node] == WHITE:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one_through_others():
    # The checker itself: a cycle through a third module is found, a
    # diamond is not a cycle.
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1, "c": 1}, "b": {"d": 1}, "c": {"d": 1}, "d": {}}) is None


def test_relative_and_function_level_imports_are_seen():
    tree = ast.parse("def f():\n    from . import hub\n    from .transport import base\n")
    known = {"gchat.hub", "gchat.transport", "gchat.transport.base"}
    found = imported("gchat.server", tree, known)
    assert {"gchat.hub", "gchat.transport.base"} <= set(found)


def test_every_module_has_a_layer():
    missing = sorted(set(modules()) - set(LAYERS))
    assert not missing, f"place these modules in LAYERS (and in docs/how-it-works.md): {missing}"
    gone = sorted(set(LAYERS) - set(modules()))
    assert not gone, f"LAYERS names modules that no longer exist: {gone}"


def test_imports_point_down():
    upward = [
        f"{name} (layer {LAYERS[name]}) imports {target} (layer {LAYERS[target]}) at line {line}"
        for name, targets in graph().items()
        for target, line in targets.items()
        if LAYERS[target] > LAYERS[name]
    ]
    assert not upward, "\n".join(upward)


def test_design_rules():
    broken = [
        f"{name} imports {target} at line {line}"
        for name, targets in graph().items()
        for target, line in targets.items()
        for prefix, banned in FORBIDDEN.items()
        if name.startswith(prefix) and target in banned
    ]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("name", PURE)
def test_pure_core_does_no_io(name):
    trees = modules()
    found = imported(name, trees[name], set(trees))
    impure = sorted(target for target in found if target.split(".")[0] in IMPURE)
    assert not impure, f"{name} is pure but imports {impure}"


def test_private_names_stay_home():
    """A name with a leading underscore is its module's own business: no
    other module imports it (web.py once imported server._Listener)."""
    trees = modules()
    leaks = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gchat"):
                leaks += [
                    f"{name} imports {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not leaks, "\n".join(leaks)


if __name__ == "__main__":  # print the graph, for the docs
    for module, targets in sorted(graph().items()):
        print(f"{LAYERS.get(module, '?')} {module}: {', '.join(sorted(targets))}", file=sys.stdout)
