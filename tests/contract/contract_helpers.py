"""Helpers of the contract tests: the committed document, its schemas, and Node."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jsonschema_rs
from support import ROOT

JS_DIR = Path(__file__).parent / "js"
DOCUMENT = ROOT / "asyncapi.yaml"


def run_node(
    node: str, *argv: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run([node, *argv], cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=timeout)


def schema_validator(contract: dict, ref: str) -> jsonschema_rs.Draft7Validator:
    """A draft-07 validator for one `$ref` of the document (AsyncAPI 3.0 schemas are draft-07)."""
    return jsonschema_rs.Draft7Validator({"allOf": [{"$ref": ref}], "components": contract["components"]})


def resolve(contract: dict, ref: str) -> dict:
    """The part of the document a local `$ref` points at."""
    node = contract
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node
