"""A keys file with three named keys, and writing one: the keys tests' material."""

from __future__ import annotations

import hashlib
from pathlib import Path

ALICE = "alice-secret-key-1"


BOB = "bob-secret-key-2"


CAROL = "carol-secret-key-3"


KEYS_FILE = f"""
[keys.alice]
key = "{ALICE}"
models = ["qwen3:*", "Llama3.2"]
tokens_per_day = 5

[keys.bob]
key = "sha256:{hashlib.sha256(BOB.encode()).hexdigest()}"
role = "admin"
models = ["llama3.2*"]

[keys.carol]
key = "{CAROL}"
requests_per_minute = 2
"""


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    return str(path)
