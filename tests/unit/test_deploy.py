"""The scale-out example in ``deploy/``: every file parsed, the compose file valid against the Compose
Specification (``tests/data/compose-spec.json``), and the pieces coherent with each other and with
Minato's own settings.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from minato.auth.keyring import Keyring, refuse_unsafe_start
from minato.errors import SettingsError
from minato.settings import Settings

ROOT: Final = Path(__file__).resolve().parents[2]
DEPLOY: Final = ROOT / "deploy"
SCHEMA: Final = ROOT / "tests" / "data" / "compose-spec.json"
#: Settings that hold keys or credentials: never written into the compose file itself.
SECRET_SETTINGS: Final = frozenset({"MINATO_API_KEYS", "MINATO_ADMIN_KEYS", "MINATO_OLLAMA_HEADERS"})
_VARIABLE: Final = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")
#: A user key as the env file would hold it once filled in.
KEY_DIGEST: Final = "sha256:" + "ab" * 32


# --------------------------------------------------------------------------- reading the files


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def _interpolate(value: object) -> str:
    """Compose's ``${NAME:-default}`` with nothing set: every variable takes its default."""

    def default(match: re.Match[str]) -> str:
        assert match.group(2) is not None, f"${{{match.group(1)}}} has no default: {value!r}"
        return match.group(2)

    return _VARIABLE.sub(default, str(value))


def _env_lines(text: str) -> tuple[dict[str, str], list[str]]:
    """An env file's ``KEY=value`` lines, and the names of the commented-out ``# KEY=`` ones."""
    values: dict[str, str] = {}
    commented: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if match := re.fullmatch(r"#\s*([A-Z][A-Z0-9_]*)=.*", stripped):
            commented.append(match.group(1))
        elif stripped and not stripped.startswith("#"):
            key, sep, value = stripped.partition("=")
            assert sep, f".env.example line {number} is no KEY=value: {line!r}"
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f".env.example line {number}: {line!r}"
            values[key] = value
    return values, commented


def _replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if name.startswith("minato")}


def _replica_env(service: dict[str, Any], env_file: dict[str, str]) -> dict[str, str]:
    """What a replica's process sees: the env file, then the service's own ``environment`` over it."""
    env = dict(env_file)
    env.update({key: _interpolate(value) for key, value in service["environment"].items()})
    return env


def _start(env: dict[str, str]) -> Settings:
    """What ``minato serve`` checks before it listens; raises ``SettingsError`` where it would refuse."""
    settings = Settings.from_env(env)
    refusal = refuse_unsafe_start(settings, settings.host, Keyring.from_settings(settings))
    if refusal:
        raise SettingsError(refusal)
    return settings


@dataclass
class Directive:
    """One nginx directive: its name, its arguments, and its block (``None`` for a simple directive)."""

    name: str
    args: list[str]
    block: list[Directive] | None = None
    line: int = 0

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str, *args: str) -> Directive:
        found = [d for d in self.all(name) if list(args) == d.args[: len(args)]]
        assert len(found) == 1, f"expected one `{name} {' '.join(args)}` in `{self.name}`, found {len(found)}"
        return found[0]

    def value(self, name: str) -> str:
        directive = self.one(name)
        assert len(directive.args) == 1, f"line {directive.line}: `{name}` takes one value"
        return directive.args[0]


@dataclass
class _Parser:
    tokens: list[tuple[str, int]]
    at: int = 0
    root: Directive = field(default_factory=lambda: Directive("main", [], []))

    def parse(self) -> Directive:
        assert self.root.block is not None
        self.root.block.extend(self._block(top=True))
        return self.root

    def _block(self, *, top: bool) -> list[Directive]:
        out: list[Directive] = []
        words: list[tuple[str, int]] = []
        while self.at < len(self.tokens):
            token, line = self.tokens[self.at]
            self.at += 1
            if token == ";":
                assert words, f"line {line}: empty directive"
                out.append(Directive(words[0][0], [w for w, _ in words[1:]], None, words[0][1]))
                words = []
            elif token == "{":
                assert words, f"line {line}: a block without a name"
                out.append(Directive(words[0][0], [w for w, _ in words[1:]], self._block(top=False), words[0][1]))
                words = []
            elif token == "}":
                assert not top, f"line {line}: unbalanced `}}`"
                assert not words, f"line {line}: `{words[0][0]}` is not ended by `;`"
                return out
            else:
                words.append((token, line))
        assert top, "a block is never closed"
        assert not words, f"line {words[0][1]}: `{words[0][0]}` is not ended by `;`"
        return out


_NGINX_TOKEN: Final = re.compile(r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|#[^\n]*|[{};]|[^\s{};\"'#]+|\S")


def parse_nginx(text: str) -> Directive:
    """nginx's configuration grammar: words, quoted strings, ``;``-ended directives, ``{}`` blocks."""
    tokens: list[tuple[str, int]] = []
    for match in _NGINX_TOKEN.finditer(text):
        token = match.group(0)
        if token.startswith("#"):
            continue
        assert token not in ('"', "'"), f"line {text.count(chr(10), 0, match.start()) + 1}: unclosed quote"
        line = text.count("\n", 0, match.start()) + 1
        tokens.append((token[1:-1] if token[0] in "\"'" else token, line))
    return _Parser(tokens).parse()


def _nginx() -> Directive:
    return parse_nginx((DEPLOY / "nginx.conf").read_text())


def _seconds(text: str) -> float:
    """An nginx time (``720s``, ``12m``, ``1h``; a bare number is seconds)."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", text)
    assert match, f"not an nginx time: {text!r}"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]
    return int(match.group(1)) * scale


def _bytes(text: str) -> int:
    """An nginx size (``200m``, ``1g``, ``512k``; a bare number is bytes)."""
    match = re.fullmatch(r"(\d+)([kKmMgG])?", text)
    assert match, f"not an nginx size: {text!r}"
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[(match.group(2) or "").lower()]


# --------------------------------------------------------------------------- every file, parsed


def test_every_file_in_deploy_is_one_these_tests_check() -> None:
    # grafana/ is the dashboard's, checked against Minato's metrics by test_dashboard.py.
    assert sorted(p.name for p in DEPLOY.iterdir()) == [
        ".env.example",
        "compose.yaml",
        "grafana",
        "nginx.conf",
        "prometheus.yml",
    ]


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(_compose())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "redis", "imagee"), "redis"),  # a misspelt key
        (("services", "nginx", "ports"), "8080:80"),  # a string where a list belongs
        (("services", "minato-a", "depends_on"), 5),
        (("volumes", "redis-data"), ["not", "a", "volume"]),
    ],
)
def test_the_schema_refuses_a_broken_compose_file(path: tuple[str, ...], value: object) -> None:
    schema = json.loads(SCHEMA.read_text())
    broken = copy.deepcopy(_compose())
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)


def test_the_nginx_conf_parses_into_events_and_one_http_server() -> None:
    conf = _nginx()
    conf.one("events")
    http = conf.one("http")
    assert len(http.all("server")) == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("http { server { listen 80 } }", "not ended by `;`"),
        ("http { server { listen 80; }", "never closed"),
        ("http { listen 80; } }", "unbalanced"),
        ('http { return 200 "unclosed; }', "unclosed quote"),
        ("events {} worker_processes 1", "not ended by `;`"),
    ],
)
def test_the_nginx_parser_refuses_a_broken_conf(text: str, problem: str) -> None:
    with pytest.raises(AssertionError, match=problem):
        parse_nginx(text)


def test_the_env_example_has_only_settings_and_deployment_variables() -> None:
    values, commented = _env_lines((DEPLOY / ".env.example").read_text())
    known = {f"MINATO_{name.upper()}" for name in Settings.__struct_fields__}
    for key in [*values, *commented]:
        if key.startswith("MINATO_"):
            assert key in known, f"{key} is not a Minato setting"
        else:
            assert key.startswith(("LB_", "OLLAMA_")), f"{key}: neither a setting nor a compose variable"
    assert values, "the example sets the keys"


# --------------------------------------------------------------------------- coherence


def test_two_replicas_built_from_the_repository_dockerfile() -> None:
    compose = _compose()
    replicas = _replicas(compose)
    assert len(replicas) == 2
    for name, service in replicas.items():
        build = service["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT, name
        assert (context / build["dockerfile"]).is_file(), name
        assert "ports" not in service, f"{name} is reached through nginx only"
        assert "/health" in " ".join(service["healthcheck"]["test"]), name


def test_every_minato_variable_the_deployment_sets_is_a_valid_setting() -> None:
    compose = _compose()
    env_file, _ = _env_lines((DEPLOY / ".env.example").read_text())
    # The example's placeholders stand for sha256 digests; real ones make a start-able environment.
    filled = {key: (KEY_DIGEST if value.startswith("sha256:<") else value) for key, value in env_file.items()}
    for name, service in _replicas(compose).items():
        assert [entry["path"] for entry in service["env_file"]] == [".env"], name
        assert all(entry["required"] for entry in service["env_file"]), f"{name} never starts without its keys"
        settings = _start(_replica_env(service, filled))
        assert (settings.host, settings.auth) == ("0.0.0.0", "auto"), name


def test_the_env_example_as_copied_refuses_to_start() -> None:
    """Its placeholders are not keys: an unedited copy stops Minato with a message, never runs open."""
    env_file, _ = _env_lines((DEPLOY / ".env.example").read_text())
    service = next(iter(_replicas(_compose()).values()))
    with pytest.raises(SettingsError, match=r"MINATO_(API|ADMIN)_KEYS: 'sha256:' must be followed"):
        _start(_replica_env(service, env_file))


def test_a_replica_without_keys_refuses_to_start() -> None:
    service = next(iter(_replicas(_compose()).values()))
    with pytest.raises(SettingsError, match=r"refusing to serve on 0\.0\.0\.0 without API keys"):
        _start(_replica_env(service, {}))


def test_both_replicas_point_at_both_ollama_hosts_and_at_the_redis_service() -> None:
    compose = _compose()
    services = compose["services"]
    ollamas = {name for name, svc in services.items() if str(svc.get("image", "")).startswith("ollama/ollama")}
    assert len(ollamas) == 2
    filled = {"MINATO_API_KEYS": KEY_DIGEST}
    for name, service in _replicas(compose).items():
        settings = _start(_replica_env(service, filled))
        backends = [urlsplit(url) for url in settings.ollama_urls]
        assert {(u.hostname, u.port) for u in backends} == {(host, 11434) for host in ollamas}, name
        redis = urlsplit(settings.redis_url)
        assert redis.scheme == "redis"
        assert redis.hostname in services, name
        assert services[redis.hostname]["image"].startswith(("redis", "valkey/valkey")), name
        assert (redis.port or 6379) == 6379
        assert set(service["depends_on"]) == {redis.hostname, *ollamas}, name
    for host in ollamas:
        mounts = [str(v).split(":")[1] for v in services[host]["volumes"]]
        assert mounts == ["/root/.ollama"], host
        source = str(services[host]["volumes"][0]).split(":")[0]
        assert source in compose["volumes"], f"{host}: models live in a named volume"


def test_redis_is_private_persistent_and_health_checked() -> None:
    compose = _compose()
    redis = compose["services"]["redis"]
    assert "ports" not in redis
    assert "expose" not in redis
    assert " ".join(redis["healthcheck"]["test"]) == "CMD redis-cli ping"
    assert str(redis["volumes"][0]).split(":")[0] in compose["volumes"]
    assert "--appendonly" in redis["command"]


def test_only_nginx_is_published() -> None:
    services = _compose()["services"]
    assert [name for name, svc in services.items() if "ports" in svc] == ["nginx"]
    [port] = services["nginx"]["ports"]
    assert _interpolate(port).startswith("127.0.0.1:"), "published on loopback unless told otherwise"


def test_no_key_or_credential_is_written_in_the_compose_file() -> None:
    compose = _compose()
    text = (DEPLOY / "compose.yaml").read_text()
    for name, service in compose["services"].items():
        for key in service.get("environment", {}):
            assert key not in SECRET_SETTINGS, f"{name} sets {key} inline: it belongs in the env file"
    assert not re.search(r"sha256:[0-9a-fA-F]{64}", text)
    assert not re.search(r"(?i)bearer\s+[^\s$]", text), "only a $VARIABLE after Bearer"
    assert ".env" in (ROOT / ".gitignore").read_text().split(), "deploy/.env (the real keys) is never committed"


def test_nginx_balances_over_both_replicas_on_their_port() -> None:
    compose = _compose()
    http = _nginx().one("http")
    location = http.one("server").one("location", "/")
    proxy_pass = urlsplit(location.value("proxy_pass"))
    upstream = http.one("upstream", proxy_pass.netloc)
    servers = {d.args[0] for d in upstream.all("server")}
    filled = {"MINATO_API_KEYS": KEY_DIGEST}
    expected = {f"{name}:{_start(_replica_env(service, filled)).port}" for name, service in _replicas(compose).items()}
    assert servers == expected
    mounts = compose["services"]["nginx"]["volumes"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in mounts


def test_nginx_streams_and_waits_as_long_as_minato_may_take() -> None:
    defaults = Settings()
    server = _nginx().one("http").one("server")
    location = server.one("location", "/")
    assert location.value("proxy_buffering") == "off"
    assert location.value("proxy_request_buffering") == "off"
    assert location.value("proxy_http_version") == "1.1"
    # A whole answer may wait for a slot, then take the whole request timeout, before a byte is sent.
    silence = defaults.queue_timeout + defaults.request_timeout
    assert _seconds(location.value("proxy_read_timeout")) > silence
    assert _seconds(location.value("proxy_send_timeout")) > silence
    assert _bytes(server.value("client_max_body_size")) >= defaults.max_body_bytes
    headers = {d.args[0].lower(): d.args[1] for d in location.all("proxy_set_header")}
    assert headers["authorization"] == "$http_authorization"
    assert headers["connection"] == ""


def test_readiness_goes_through_nginx_to_minatos_ready() -> None:
    compose = _compose()
    server = _nginx().one("http").one("server")
    ready = server.one("location", "=", "/ready")
    assert ready.value("proxy_pass") == server.one("location", "/").value("proxy_pass")
    assert ready.one("deny").args == ["all"], "not public"
    check = " ".join(compose["services"]["nginx"]["healthcheck"]["test"])
    assert check.endswith("http://127.0.0.1/ready")
    for name, service in _replicas(compose).items():
        assert service["environment"]["MINATO_OPEN_PROBES"] == "true", f"{name}: /ready without a key"


def _prometheus() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    return loaded


def test_prometheus_scrapes_every_replica_at_its_port_and_metrics_path() -> None:
    compose = _compose()
    [job] = _prometheus()["scrape_configs"]
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    filled = {"MINATO_API_KEYS": KEY_DIGEST}
    replicas = {f"{name}:{_start(_replica_env(service, filled)).port}" for name, service in _replicas(compose).items()}

    assert sorted(targets) == sorted(replicas)
    assert job["metrics_path"] == "/metrics"


def test_prometheus_scrapes_with_the_key_compose_mounts_as_a_secret() -> None:
    compose = _compose()
    [job] = _prometheus()["scrape_configs"]
    prometheus = compose["services"]["prometheus"]

    # A key of its own, from a file: /metrics is not for every key, and the key is not in the config.
    assert job["authorization"]["type"] == "Bearer"
    assert set(job["authorization"]) == {"type", "credentials_file"}
    [secret] = prometheus["secrets"]
    assert job["authorization"]["credentials_file"] == f"/run/secrets/{secret}"
    source = compose["secrets"][secret]["file"]
    assert source.startswith("./")
    ignored = (ROOT / ".gitignore").read_text().split()
    assert f"deploy/{source.removeprefix('./')}" in ignored, "the key file is never committed"


def test_prometheus_runs_only_with_the_monitoring_profile_unpublished_with_its_config() -> None:
    compose = _compose()
    prometheus = compose["services"]["prometheus"]
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in prometheus["volumes"]}

    assert prometheus["profiles"] == ["monitoring"]
    assert "ports" not in prometheus
    assert mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert "prometheus-data" in compose["volumes"]
    assert set(prometheus["depends_on"]) == set(_replicas(compose))
