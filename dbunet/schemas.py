"""The JSON documents dbunet writes and later reads back as untrusted input, declared once as JSON Schema and
checked with `jsonschema`: the artifacts manifest (manifest.json) and the engines index (engines/index.json).
The model config inside a manifest is checked by its dataclasses (dbunet.config), which carry its bounds.

`python -m dbunet.schemas DIR` writes the schemas as files, for tools outside dbunet.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MAX_FILES = 16  # per artifact: the graph and its external data
MAX_RANK = 8
MAX_DIM = 1 << 20
PRECISIONS = ("fp32", "fp16")  # the precisions an export writes graphs in
DTYPES = ("float32", "float16", "int64")

SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
NAME = {"type": "string", "minLength": 1, "maxLength": 255}
RELATIVE_PATH = {"type": "string", "minLength": 1, "maxLength": 4096}  # inside the directory: manifest.inside()

TENSOR = {
    "type": "object",
    "required": ["name", "dtype", "dims"],
    "additionalProperties": False,
    "properties": {
        "name": NAME,
        "dtype": {"enum": list(DTYPES)},
        "dims": {"type": "array", "maxItems": MAX_RANK, "items": {"oneOf": [
            {"type": "integer", "minimum": 0, "maximum": MAX_DIM},
            {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},  # a named dynamic axis
        ]}},
    },
}

ARTIFACT = {
    "type": "object",
    "required": ["component", "precision", "files", "sha256", "io", "opset"],
    "additionalProperties": False,
    "properties": {
        "component": NAME,
        "precision": {"enum": list(PRECISIONS)},
        "files": {"type": "array", "minItems": 1, "maxItems": MAX_FILES, "uniqueItems": True, "items": RELATIVE_PATH},
        "sha256": {"type": "object", "maxProperties": MAX_FILES, "additionalProperties": SHA256},
        "io": {"type": "object", "required": ["inputs", "outputs"], "additionalProperties": False,
               "properties": {"inputs": {"type": "array", "items": TENSOR},
                              "outputs": {"type": "array", "minItems": 1, "items": TENSOR}}},
        "opset": {"type": "integer", "minimum": 1, "maximum": 100},
        "decomposed": {"type": "boolean"},
        "note": {"type": "string"},
        "parity": {"type": "object"},
    },
}

TOKENIZER = {"type": "object", "required": ["file", "sha256"], "additionalProperties": False,
             "properties": {"file": RELATIVE_PATH, "sha256": SHA256}}

MANIFEST = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "dbunet artifacts manifest",
    "type": "object",
    "required": ["format_version", "dbunet_version", "config", "weights_sha256", "tokenizer", "artifacts"],
    "additionalProperties": False,
    "properties": {
        "format_version": {"type": "integer"},
        "dbunet_version": {"type": "string"},
        "config": {"type": "object"},  # its fields and bounds: dbunet.config.ModelConfig.from_dict
        "weights_sha256": SHA256,
        "weights_source": {"type": "string"},
        "tokenizer": TOKENIZER,
        "tokenizer_2": TOKENIZER,  # SDXL's second tokenizer
        "tools": {"type": "object", "additionalProperties": {"type": "string"}},
        "plugins": {"type": "array", "items": {"type": "object"}},
        "artifacts": {"type": "array", "minItems": 1, "items": ARTIFACT},
    },
}

ENGINES_INDEX = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "dbunet TensorRT engines index",
    "type": "object",
    "required": ["version", "engines"],
    "additionalProperties": False,
    "properties": {
        "version": {"type": "integer"},
        "engines": {"type": "array", "items": {
            "type": "object",
            "required": ["component", "resolution", "key", "file", "sha256", "device", "plugin_path"],
            "additionalProperties": False,
            "properties": {
                "component": NAME,
                "resolution": {"type": "string", "pattern": "^(any|[0-9]{1,5}x[0-9]{1,5})$"},
                "key": SHA256,
                "file": RELATIVE_PATH,
                "sha256": SHA256,
                "device": {"type": "object", "required": ["tensorrt", "gpu", "compute_capability"],
                           "additionalProperties": False,
                           "properties": {"tensorrt": {"type": "string"}, "gpu": {"type": "string"},
                                          "compute_capability": {"type": "integer", "minimum": 10, "maximum": 999}}},
                "plugin_path": {"type": "string"},
                "shapes": {"type": "object"},
            },
        }},
    },
}

SCHEMAS = {"manifest": MANIFEST, "engines-index": ENGINES_INDEX}


def problem(document: Any, schema: dict) -> str | None:
    """None if `document` follows `schema`; else the most relevant violation, in one line with its place."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "top level"
    return f"{where}: {error.message[:160]}"


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m dbunet.schemas DIR", file=sys.stderr)
        return 2
    from dbunet import atomic

    folder = Path(args[0])
    folder.mkdir(parents=True, exist_ok=True)
    for name, schema in SCHEMAS.items():
        atomic.write_text(folder / f"{name}.schema.json", json.dumps(schema, indent=2) + "\n")
        print(f"wrote {folder / f'{name}.schema.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
