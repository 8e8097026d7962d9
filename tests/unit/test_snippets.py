"""How the docs' snippets are found (``tests/support/snippets.py``): what is one, what its directive says, what is
rewritten."""

from __future__ import annotations

import pytest

from tests.support.snippets import (
    REPO,
    Directive,
    SnippetError,
    all_snippets,
    extract,
    markdown_files,
    rewrite,
    setup_models,
    uses_keys,
)

PAGE = """# A page

```sh
curl 'localhost:8000/llama3.2:1b?message=hi'
```

```sh
docker compose up -d
```

<!-- snippet: expect 403 -->
```bash
curl http://minato:8000/api/pull -H 'Authorization: Bearer <key>' -d '{"model": "x"}'
```

```python
import ollama
print(ollama.list())
```

```python
print("no client here")
```

- In a list:

  <!-- snippet: env OLLAMA_HOST=http://minato:8000 OLLAMA_API_KEY=<key> -->
  ```py
  from langchain_ollama import ChatOllama
  ```

```js
import { Ollama } from "ollama";
```

```js
const es = new EventSource('/stream/llama3.2:1b?message=hi');
```

<!-- snippet: skip (needs docker) -->
```sh
docker compose up -d && curl localhost:8000/health
```

```json
{"curl": "localhost:8000"}
```
"""


def test_curl_blocks_and_client_blocks_are_snippets_with_their_line_and_directive() -> None:
    found = extract(PAGE, "page.md")

    assert [(s.id, s.kind) for s in found] == [
        ("page.md:3", "sh"),
        ("page.md:12", "sh"),
        ("page.md:16", "python"),
        ("page.md:28", "python"),
        ("page.md:32", "js"),
        ("page.md:41", "sh"),
    ]
    assert found[0].directive == Directive()
    assert found[1].directive == Directive(expect=403)
    assert found[3].directive == Directive(env=(("OLLAMA_HOST", "http://minato:8000"), ("OLLAMA_API_KEY", "<key>")))
    assert found[5].directive == Directive(skip="needs docker")
    assert found[0].code == "curl 'localhost:8000/llama3.2:1b?message=hi'\n"


@pytest.mark.parametrize(
    ("page", "complaint"),
    [
        ("<!-- snippet: expcet 403 -->\n```sh\ncurl localhost:8000/\n```\n", "unknown snippet directive"),
        ("<!-- snippet: skip needs docker -->\n```sh\ncurl localhost:8000/\n```\n", "unknown snippet directive"),
        ("<!-- snippet: expect 403 -->\n\ntext\n\n```sh\ncurl localhost:8000/\n```\n", "right above a code block"),
        ("Text <!-- snippet: expect 403 --> here.\n\n```sh\ncurl localhost:8000/\n```\n", "inside a paragraph"),
        ("<!-- snippet: expect 403 -->\n```sh\nmake test\n```\n", "not a snippet"),
        ("<!-- snippet: expect 403 -->\n```python\nimport openai\n```\n", "curl blocks only"),
        ("<!-- snippet: env A=b -->\n```sh\ncurl localhost:8000/\n```\n", "sets its own environment"),
        ("<!-- snippet: expect 403 -->\n<!-- more -->\n```sh\ncurl localhost:8000/\n```\n", "one line"),
    ],
    ids=[
        "misspelt",
        "skip-without-parentheses",
        "not-above-a-block",
        "in-a-paragraph",
        "above-a-non-snippet",
        "expect-on-python",
        "env-on-curl",
        "two-lines",
    ],
)
def test_a_directive_the_test_could_not_honour_is_an_error_not_ignored(page: str, complaint: str) -> None:
    with pytest.raises(SnippetError, match=complaint):
        extract(page, "page.md")


def test_only_the_address_and_the_key_placeholders_are_rewritten() -> None:
    code = (
        "curl 'localhost:8000/x' http://minato:8000/api/chat 127.0.0.1:8000/y localhost:8080/z "
        "'minato:80001' -H 'Authorization: Bearer <key>' -H 'X-API-Key: <admin key>' owner=<fingerprint> <value>"
    )
    keys = {"<key>": "user-k", "<admin key>": "admin-k", "<fingerprint>": "0123456789ab"}

    assert rewrite(code, "127.0.0.1:4321", keys) == (
        "curl '127.0.0.1:4321/x' http://127.0.0.1:4321/api/chat 127.0.0.1:4321/y localhost:8080/z "
        "'minato:80001' -H 'Authorization: Bearer user-k' -H 'X-API-Key: admin-k' owner=0123456789ab <value>"
    )


def test_a_snippet_that_writes_a_key_or_shows_a_401_runs_against_a_minato_with_keys() -> None:
    keyless, refused, keyed, by_env, admin = extract(
        "```sh\ncurl localhost:8000/\n```\n"
        "<!-- snippet: expect 401 -->\n```sh\ncurl localhost:8000/\n```\n"
        "```sh\ncurl -H 'Authorization: Key <key>' localhost:8000/\n```\n"
        "<!-- snippet: env OLLAMA_API_KEY=<key> -->\n```python\nimport ollama\n```\n"
        "```sh\ncurl -H 'Authorization: Key <admin key>' localhost:8000/\n```\n",
        "page.md",
    )

    assert [uses_keys(s) for s in (keyless, refused, keyed, by_env, admin)] == [False, True, True, True, True]


def test_the_models_come_from_the_readmes_set_up_section() -> None:
    readme = (REPO / "README.md").read_text()

    assert setup_models(readme) == ["llama3.2:1b", "llava:7b"]
    with pytest.raises(SnippetError, match="Set up"):
        setup_models("# Minato\n\n## Usage\n\ncurl -X POST 'localhost:8000/install/x'\n")
    with pytest.raises(SnippetError, match="pulls no model"):
        setup_models("## Set up\n\nNothing to pull.\n\n## Next\n")


def test_the_docs_are_read_and_every_page_has_snippets() -> None:
    files = markdown_files()
    snippets = all_snippets(files)
    pages = {s.path for s in snippets}

    assert files[0].relative_to(REPO).as_posix() == "README.md"
    assert {"README.md", "docs/clients.md"} <= pages
    assert {s.kind for s in snippets if s.path == "docs/clients.md"} == {"sh", "python", "js"}
