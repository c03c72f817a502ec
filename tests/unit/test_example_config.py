"""config.example.yaml is a valid configuration, also with its commented
optional blocks turned on (so the documentation cannot drift from the schema)."""

from __future__ import annotations

import re
from pathlib import Path

from wsproxy.config import parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def test_the_example_is_valid_as_shipped() -> None:
    config = parse_config(EXAMPLE.read_text(), "config.example.yaml")
    assert config.listen[0].tls is None
    assert not config.routes[0].rewrite


def test_the_commented_blocks_are_valid_too() -> None:
    text = EXAMPLE.read_text()
    # Uncomment the optional mappings shown as "# key:" blocks under a key.
    for block in ("tls", "health"):
        text = re.sub(
            rf"^(\s*)# ({block}:\n(?:\1#   .*\n)+)",
            lambda m: m[1] + m[2].replace(f"\n{m[1]}#   ", f"\n{m[1]}  "),
            text,
            flags=re.MULTILINE,
        )
    text = re.sub(r"^(\s*)#   # .*\n", "", text, flags=re.MULTILINE)
    text = text.replace('"127.0.0.1:1215"', '"https://127.0.0.1:1215"')
    text = text.replace("# host: app.internal", "host: app.internal")
    config = parse_config(text, "config.example.yaml")
    assert config.listen[0].tls is not None
    assert config.upstreams["app"].tls.server_name == "app.internal"
    assert config.upstreams["app"].health is not None
    assert config.routes[0].rewrite.host == "app.internal"
