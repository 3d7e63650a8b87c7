"""
The layers of L{procession} (README.rst, "Layout"): imports point down
only, read from every module's source with L{ast}; front ends never call
the store; and L{procession.client} runs without Twisted.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "procession")

#: What each layer may import of procession besides itself.  C{core} is
#: everyone's; C{server} (start-up wiring) may import every layer; the
#: client, only C{core}.
MAY_IMPORT = {
    "core": set(),
    "net": {"core"},
    "redis": {"core", "net"},
    "store": {"core", "net", "redis"},
    "service": {"core", "net", "redis", "store"},
    "tcp": {"core", "net", "service"},
    "http": {"core", "net", "service"},
    "server": {
        "core",
        "net",
        "redis",
        "store",
        "service",
        "tcp",
        "http",
        "client",
    },
    "client": {"core"},
}

#: Third-party packages the client and core may not import (the
#: client runs in applications that have no reactor).
SERVER_ONLY = {"twisted", "txredisapi", "klein", "treq", "jinja2", "zope"}


def modules() -> dict[str, str]:
    """
    Every module of the package: dotted name to file path.
    """
    found = {}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, ROOT)[: -len(".py")]
            dotted = relative.replace(os.sep, ".").removesuffix(".__init__")
            found[dotted] = path
    return found


def imported(path: str) -> set[str]:
    """
    The absolute module names a source file imports, at any depth
    (imports inside functions count as much as those at the top).
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import")
            assert node.module is not None
            names.add(node.module)
            # "from procession import core" imports procession.core.
            if node.module == "procession":
                names.update(
                    f"procession.{a.name}" for a in node.names if a.name in MAY_IMPORT
                )
    return names


def layer_of(module: str) -> str | None:
    """
    The layer (subpackage) of a procession module, None for the package
    itself.
    """
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


class ImportDirectionTests(SynchronousTestCase):
    def test_every_module_has_a_layer(self) -> None:
        """
        Every module lives in one of the known layers (a new subpackage
        must say where it stands).
        """
        for module in modules():
            layer = layer_of(module)
            if layer is not None:
                self.assertIn(layer, MAY_IMPORT, module)

    def test_imports_point_down(self) -> None:
        """
        No module imports a layer above its own, nor a sibling front end.
        """
        wrong = []
        for module, path in sorted(modules().items()):
            layer = layer_of(module)
            if layer is None:
                continue
            allowed = MAY_IMPORT[layer] | {layer}
            for name in sorted(imported(path)):
                if name == "procession":
                    # The package itself holds only the version.
                    continue
                if name.startswith("procession."):
                    target = layer_of(name)
                    if target not in allowed:
                        wrong.append(f"{module} imports {name}")
                elif layer in ("client", "core"):
                    if name.split(".")[0] in SERVER_ONLY:
                        wrong.append(f"{module} imports {name}")
        self.assertEqual(wrong, [])

    def test_front_ends_never_call_the_store(self) -> None:
        """
        Outside the service, the store and start-up wiring, no module
        reaches the store through an attribute named C{store}.
        """
        wrong = []
        for module, path in sorted(modules().items()):
            if layer_of(module) in ("service", "store", "server"):
                continue
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr == "store":
                    wrong.append(f"{module}:{node.lineno}")
        self.assertEqual(wrong, [])

    def test_wiring_calls_no_store_method(self) -> None:
        """
        Start-up wiring builds the store and hands it on, but calls none of
        its methods: even its start-up checks are the store layer's
        (L{procession.store.health}).
        """
        wrong = []
        for module, path in sorted(modules().items()):
            if layer_of(module) != "server":
                continue
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                if not isinstance(func, ast.Attribute):
                    continue
                target = func.value
                if (isinstance(target, ast.Attribute) and target.attr == "store") or (
                    isinstance(target, ast.Name) and target.id == "store"
                ):
                    wrong.append(f"{module}:{node.lineno}")
        self.assertEqual(wrong, [])

    def test_the_checker_sees_imports(self) -> None:
        """
        The checks above read real imports: a module known to import the
        service and Twisted is seen to.
        """
        found = imported(modules()["procession.tcp.protocol"])
        self.assertIn("procession.service.dispatcher", found)
        self.assertIn("twisted.internet", found)


class ClientWithoutTwistedTests(SynchronousTestCase):
    def test_client_imports_no_twisted(self) -> None:
        """
        Importing the client, its worker runner and the CLI loads no
        Twisted, no txredisapi and nothing of the server.
        """
        code = (
            "import sys\n"
            "import procession.client, procession.client.worker,"
            " procession.client.cli\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in"
            f" {sorted(SERVER_ONLY)!r} or (m.startswith('procession.') and"
            " m.split('.')[1] not in ('client', 'core')))\n"
            "print(' '.join(bad))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "")
