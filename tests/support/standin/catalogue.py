"""Model names and the stand-in's model catalogue (installed, dynamic and pullable models)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Any, Final

__all__ = [
    "BEHAVIOUR_MODELS",
    "INSTALLED_AT_START",
    "PULLABLE",
    "ModelName",
    "ModelSpec",
    "dynamic_spec",
    "known_spec",
    "parse_name",
]

DEFAULT_HOST: Final = "registry.ollama.ai"
DEFAULT_NAMESPACE: Final = "library"
DEFAULT_TAG: Final = "latest"


@dataclass(frozen=True, slots=True)
class ModelName:
    """A parsed ``[host/][namespace/]model[:tag]`` with Ollama's defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def key(self) -> str:
        """Case-insensitive identity (Ollama compares names with EqualFold)."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def short(self) -> str:
        """``DisplayShortest``: drop the default host and namespace."""
        if self.host == DEFAULT_HOST:
            if self.namespace == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return self.full


def _valid_part(kind: str, part: str) -> bool:
    limit = 350 if kind == "host" else 80
    if not 1 <= len(part) <= limit:
        return False
    first = part[0]
    if not (first.isascii() and (first.isalnum() or first == "_")):
        return False
    for ch in part[1:]:
        if ch in "_-":
            continue
        if ch == ".":
            if kind == "namespace":
                return False
            continue
        if ch == ":":
            if kind != "host":
                return False
            continue
        if not (ch.isascii() and ch.isalnum()):
            return False
    return True


def parse_name(text: str) -> ModelName | None:
    """Parse like Ollama's ``model.ParseName``; ``None`` when the name is invalid."""
    s = text
    tag = DEFAULT_TAG
    if s.rfind(":") > s.rfind("/"):
        s, _, tag = s.rpartition(":")
    namespace = DEFAULT_NAMESPACE
    host = DEFAULT_HOST
    if "/" in s:
        s, _, model = s.rpartition("/")
        if "/" in s:
            s, _, namespace = s.rpartition("/")
            host = s.split("://", 1)[1] if "://" in s else s
        else:
            namespace = s
    else:
        model = s
    if not (
        _valid_part("host", host)
        and _valid_part("namespace", namespace)
        and _valid_part("model", model)
        and _valid_part("tag", tag)
    ):
        return None
    return ModelName(host, namespace, model, tag)


def _digest(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


_LLAMA_TEMPLATE: Final = (
    "<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
    "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
_QWEN_TEMPLATE: Final = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}"
)
_BERT_TEMPLATE: Final = "{{ .Prompt }}"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything the stand-in says about one model, plus how it behaves when asked to run."""

    name: str  # display name, e.g. "llama3.2:latest"
    family: str
    parameter_size: str
    quantization_level: str
    parameter_count: int
    context_length: int
    embedding_length: int
    size: int
    capabilities: tuple[str, ...]
    families: tuple[str, ...] = ()
    architecture: str = ""
    template: str = _LLAMA_TEMPLATE
    stop: tuple[str, ...] = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    license: str = "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT\nLlama 3.2 Version Release Date: 2024"
    behaviour: str = "normal"  # normal | fail-midstream | fail-before | busy | hang | gated
    token_delay_ms: float = 0.0  # pause between tokens; a real small model is ~5 ms/token
    answer_tokens: int = 8
    digest: str = field(default="")
    layers: tuple[tuple[str, int], ...] = ()
    remote_model: str = ""  # a cloud model: what ollama.com runs for it (its tags entry names it)
    remote_host: str = ""

    def __post_init__(self) -> None:
        if not self.families:
            object.__setattr__(self, "families", (self.family,))
        if not self.architecture:
            object.__setattr__(self, "architecture", self.family)
        if not self.digest:
            object.__setattr__(self, "digest", _digest("manifest:" + self.name))
        if not self.layers:
            weights = self.size - 6000
            object.__setattr__(
                self,
                "layers",
                (
                    ("sha256:" + _digest("weights:" + self.name), weights),
                    ("sha256:" + _digest("license:" + self.name), 5000),
                    ("sha256:" + _digest("template:" + self.name), 900),
                    ("sha256:" + _digest("params:" + self.name), 100),
                ),
            )

    @property
    def parameters(self) -> str:
        """The ``%-30s %#v`` table Ollama returns as ``parameters``."""
        return "\n".join(f"{'stop':<30} {_go_string(s)}" for s in self.stop)

    @property
    def modelfile(self) -> str:
        blob = self.layers[0][0].replace(":", "-")
        lines = [
            '# Modelfile generated by "ollama show"',
            "# To build a new Modelfile based on this, replace FROM with:",
            f"# FROM {self.name}",
            "",
            f"FROM /root/.ollama/models/blobs/{blob}",
            f'TEMPLATE """{self.template}"""',
            *(f"PARAMETER stop {s}" for s in self.stop),
            f'LICENSE """{self.license}"""',
            "",
        ]
        return "\n".join(lines)

    def details(self) -> dict[str, object]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": list(self.families),
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def model_info(self, *, verbose: bool) -> dict[str, object]:
        arch = self.architecture
        tokens: list[str] = ["<s>", "</s>", "<unk>", "<pad>", "<mask>", "a", "b", "c"]
        info: dict[str, object] = {
            "general.architecture": arch,
            "general.file_type": 15,
            "general.parameter_count": self.parameter_count,
            "general.quantization_version": 2,
            f"{arch}.block_count": 16,
            f"{arch}.context_length": self.context_length,
            f"{arch}.embedding_length": self.embedding_length,
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": tokens if verbose else [],
        }
        # Go marshals maps with their keys sorted.
        return dict(sorted(info.items()))


def _go_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


_LLAMA_BASE: Final = ModelSpec(
    name="llama-base:latest",
    family="llama",
    parameter_size="1.2B",
    quantization_level="Q8_0",
    parameter_count=1235814432,
    context_length=131072,
    embedding_length=2048,
    size=1321098329,
    capabilities=("completion", "tools"),
    token_delay_ms=5.0,
)


def _llama(name: str, **overrides: Any) -> ModelSpec:
    """A llama-family spec; digest and layers are re-derived from the new name."""
    changes: dict[str, Any] = {"digest": "", "layers": (), **overrides}
    return replace(_LLAMA_BASE, name=name, **changes)


_SLOW_MS: Final = 50.0

BEHAVIOUR_MODELS: Final[tuple[ModelSpec, ...]] = (
    _llama("standin/slow:latest", capabilities=("completion",), token_delay_ms=_SLOW_MS),
    _llama("standin/fail-midstream:latest", capabilities=("completion",), behaviour="fail-midstream"),
    _llama("standin/fail-before:latest", capabilities=("completion",), behaviour="fail-before"),
    _llama("standin/busy:latest", capabilities=("completion",), behaviour="busy"),
    _llama("standin/hang:latest", capabilities=("completion",), behaviour="hang"),
    _llama(
        "standin/vision-slow:latest",
        capabilities=("completion", "vision"),
        families=("llama", "clip"),
        token_delay_ms=_SLOW_MS,
    ),
)

_LLAMA32: Final = _llama(
    "llama3.2:latest",
    parameter_size="3.2B",
    quantization_level="Q4_K_M",
    parameter_count=3212749888,
    embedding_length=3072,
    size=2019393189,
    digest="a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
)
_LLAMA32_1B: Final = _llama("llama3.2:1b")
_LLAVA: Final = _llama(
    "llava:7b",
    parameter_size="7B",
    quantization_level="Q4_0",
    parameter_count=7241732096,
    context_length=32768,
    embedding_length=4096,
    size=4733363377,
    capabilities=("completion", "vision"),
    families=("llama", "clip"),
    license="Apache License\nVersion 2.0, January 2004",
)
_HF_LLAMA: Final = _llama(
    "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
    parameter_size="1.24B",
    quantization_level="Q4_K_M",
    parameter_count=1235814432,
    size=807694464,
    capabilities=("completion",),
)
_QWEN3: Final = ModelSpec(
    name="qwen3:0.6b",
    family="qwen3",
    parameter_size="751.63M",
    quantization_level="Q4_K_M",
    parameter_count=751632384,
    context_length=40960,
    embedding_length=1024,
    size=522653767,
    capabilities=("completion", "tools", "thinking"),
    token_delay_ms=5.0,
    template=_QWEN_TEMPLATE,
    stop=("<|im_start|>", "<|im_end|>"),
    license="Apache License\nVersion 2.0, January 2004",
)
_MINILM: Final = ModelSpec(
    name="all-minilm:latest",
    family="bert",
    parameter_size="23M",
    quantization_level="F16",
    parameter_count=22565376,
    context_length=512,
    embedding_length=384,
    size=45960996,
    capabilities=("embedding",),
    template=_BERT_TEMPLATE,
    stop=(),
    license="Apache License\nVersion 2.0, January 2004",
)
#: The embedding model Open WebUI and most RAG set-ups pull: ``nomic-bert``, embeddings only (as Ollama
#: reports it, ``["embedding"]``), 274 MB in F16.
_NOMIC_EMBED: Final = ModelSpec(
    name="nomic-embed-text:latest",
    family="nomic-bert",
    parameter_size="137M",
    quantization_level="F16",
    parameter_count=136727040,
    context_length=2048,
    embedding_length=768,
    size=274302450,
    capabilities=("embedding",),
    template=_BERT_TEMPLATE,
    stop=(),
    license="Apache License\nVersion 2.0, January 2004",
)
_TINYLLAMA: Final = _llama(
    "tinyllama:latest",
    parameter_size="1B",
    quantization_level="Q4_0",
    parameter_count=1100048384,
    context_length=2048,
    size=637700138,
    capabilities=("completion",),
)
#: One of Ollama's cloud models: a stub on disk, run on ollama.com under the operator's account. The
#: stand-in answers it like any model, so only Minato's policy stands between a key and that account.
_GPT_OSS_CLOUD: Final = ModelSpec(
    name="gpt-oss:20b-cloud",
    family="gptoss",
    parameter_size="20.9B",
    quantization_level="MXFP4",
    parameter_count=20914757184,
    context_length=131072,
    embedding_length=2880,
    size=384,
    capabilities=("completion", "tools", "thinking"),
    license="Apache License\nVersion 2.0, January 2004",
    remote_model="gpt-oss:20b",
    remote_host="https://ollama.com:443",
)
_SMOLLM: Final = _llama(
    "smollm:135m",
    parameter_size="134.52M",
    quantization_level="Q4_0",
    parameter_count=134515008,
    context_length=2048,
    embedding_length=576,
    size=91739413,
    capabilities=("completion",),
    license="Apache License\nVersion 2.0, January 2004",
)

INSTALLED_AT_START: Final[tuple[ModelSpec, ...]] = (
    _LLAMA32,
    _LLAMA32_1B,
    _LLAVA,
    _HF_LLAMA,
    _QWEN3,
    _MINILM,
    *BEHAVIOUR_MODELS,
)

# Names a pull can resolve ("the registry"), keyed by ModelName.key.
PULLABLE: Final[dict[str, ModelSpec]] = {}
for _spec in (_TINYLLAMA, _LLAMA32, _LLAMA32_1B, _LLAVA, _QWEN3, _SMOLLM, _MINILM, _NOMIC_EMBED, _GPT_OSS_CLOUD):
    _parsed = parse_name(_spec.name)
    assert _parsed is not None
    PULLABLE[_parsed.key] = _spec

_TOKENS_TAG: Final = re.compile(r"^(\d{1,7})$")
_PACED_TAG: Final = re.compile(r"^(\d{1,7})x(\d{1,6})$")
_dynamic_cache: dict[str, ModelSpec] = {}


def dynamic_spec(name: ModelName) -> ModelSpec | None:
    """``standin/tokens:<N>``, ``standin/paced:<N>x<MS>`` and ``standin/gated:<N>`` (token n only once
    the test has opened the gate past n: ``POST /_standin/gate``): installed, but not listed."""
    if name.host != DEFAULT_HOST or name.namespace.lower() != "standin":
        return None
    cached = _dynamic_cache.get(name.key)
    if cached is not None:
        return cached
    model = name.model.lower()
    spec: ModelSpec | None = None
    if model == "tokens" and (m := _TOKENS_TAG.match(name.tag)):
        spec = _llama(name.short, capabilities=("completion",), answer_tokens=int(m.group(1)), token_delay_ms=0.0)
    elif model == "paced" and (m := _PACED_TAG.match(name.tag)):
        spec = _llama(
            name.short,
            capabilities=("completion",),
            answer_tokens=int(m.group(1)),
            token_delay_ms=float(m.group(2)),
        )
    elif model == "gated" and (m := _TOKENS_TAG.match(name.tag)):
        spec = _llama(name.short, capabilities=("completion",), answer_tokens=int(m.group(1)), behaviour="gated")
    if spec is not None:
        if len(_dynamic_cache) > 4096:
            _dynamic_cache.clear()
        _dynamic_cache[name.key] = spec
    return spec


# Every model the stand-in knows how to behave as, keyed by ModelName.key.
_CATALOGUE: Final[dict[str, ModelSpec]] = dict(PULLABLE)
for _spec in INSTALLED_AT_START:
    _parsed = parse_name(_spec.name)
    assert _parsed is not None
    _CATALOGUE[_parsed.key] = _spec


def known_spec(name: ModelName) -> ModelSpec | None:
    """A catalogue model (installed at start, pullable or scripted) or a dynamic one, by name."""
    return _CATALOGUE.get(name.key) or dynamic_spec(name)
