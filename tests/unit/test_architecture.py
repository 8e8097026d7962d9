"""The seams the next features plug into: the Ollama interface, raw forwarding, the runtime, the error tree."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from minato.auth.caller import Caller, Role
from minato.core.admission import Admission
from minato.core.generation import Lease, Question
from minato.core.policy import Policy
from minato.core.sessions import SessionManager
from minato.errors import ForbiddenError
from minato.settings import Settings
from minato.state.memory import LocalTurnLocks, MemoryStore
from minato.upstream.client import ModelFacts

pytestmark = pytest.mark.anyio
SRC = Path(__file__).resolve().parents[2] / "src" / "minato"


def _minato_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for statement in ast.walk(tree):
        if isinstance(statement, ast.ImportFrom) and statement.module and statement.module.startswith("minato"):
            found.add(statement.module)
        elif isinstance(statement, ast.Import):
            found.update(alias.name for alias in statement.names if alias.name.startswith("minato"))
    return found


def test_the_error_tree_is_a_leaf() -> None:
    assert _minato_imports(SRC / "errors.py") == set()


def test_nothing_above_upstream_names_the_concrete_client() -> None:
    """Handlers, the generation and the catalog depend on the Ollama Protocol, never on OllamaClient."""
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path.relative_to(SRC).parts[0] != "upstream"
        and path.name not in {"app.py"}
        and "OllamaClient" in path.read_text()
    ]
    assert offenders == []


def test_the_layers_contract_holds() -> None:
    """import-linter's contracts (pyproject.toml): each layer imports only the layers below it, type-only
    imports included, and nothing below the web layer imports the web framework."""
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(  # noqa: S603 - the venv's own lint-imports, fixed arguments
        [str(lint), "--no-cache"], capture_output=True, text=True, check=False, cwd=SRC.parents[1]
    )
    assert done.returncode == 0, done.stdout[-4000:]


@pytest.mark.parametrize("init", sorted(SRC.rglob("__init__.py")), ids=lambda path: str(path.parent.relative_to(SRC)))
def test_a_package_re_exports_nothing(init: Path) -> None:
    """Where a name lives is where it is imported from: an ``__init__`` that re-exported its modules'
    names made every import of the package load all of them (and the settings load the HTTP client)."""
    tree = ast.parse(init.read_text())
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("minato")
        for alias in node.names
    }
    exported = {
        element.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets)
        for element in getattr(node.value, "elts", [])
        if isinstance(element, ast.Constant)
    }
    assert exported & imported == set()


def test_only_the_renderer_knows_the_error_body_shape() -> None:
    shape = '"detail"'
    knowing = sorted(str(path.relative_to(SRC)) for path in SRC.rglob("*.py") if shape in path.read_text())
    assert knowing == ["web/rendering.py"]


async def test_a_lease_commits_at_most_once_and_releases_exactly_once(settings: Settings) -> None:
    admission = Admission(total=1, per_model=0, queue=0, wait_seconds=1)
    sessions = SessionManager(MemoryStore(), LocalTurnLocks(), settings)
    await sessions.start()
    try:
        slot = admission.try_acquire("m:latest")
        lease = Lease(await sessions.begin("", "s"), slot, "m")
        lease.question = Question("hi", [])

        await lease.commit("first")
        await lease.commit("second")
        lease.release()
        lease.release()

        session = await sessions.get("", "s")
        assert session is not None
        assert [m.content for m in session.messages] == ["hi", "first"]
        assert admission.running == 0
        assert admission.try_acquire("m:latest") is not None, "the slot came back, once"
        async with sessions.exclusive("", "s"):  # the turn came back too
            pass
    finally:
        await sessions.stop()


class ModelWithContext:
    """Only what the policy asks of Ollama (the :class:`~minato.upstream.ports.Facts` port)."""

    def __init__(self, context_length: int | None) -> None:
        self.asked: list[str] = []
        self.context_length = context_length

    async def capabilities(self, model: str) -> frozenset[str]:
        return (await self.facts(model)).capabilities

    async def facts(self, model: str) -> ModelFacts:
        self.asked.append(model)
        return ModelFacts(frozenset({"completion"}), self.context_length)


async def test_a_consumer_is_faked_by_the_one_port_it_needs(settings: Settings) -> None:
    policy = Policy(settings)
    user = Caller(fingerprint="f" * 12, role=Role.USER, name="user")
    upstream = ModelWithContext(4096)

    await policy.check_num_ctx(user, upstream, "m", 4096)
    with pytest.raises(ForbiddenError, match="the model's context length"):
        await policy.check_num_ctx(user, upstream, "m", 4097)
    assert upstream.asked == ["m", "m"]
