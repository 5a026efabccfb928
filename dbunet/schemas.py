"""The JSON documents dbunet writes and later reads back as untrusted input, declared once as JSON Schema and
checked with `jsonschema`: the artifacts manifest (manifest.json), the engines index (engines/index.json), a
dbunet-bench report (a baseline), and the model config, whose schema is generated from its dataclasses' type
hints (`dataclass_schema`), so the dataclasses stay the one declaration; their value bounds are checked by the
dataclasses themselves.

`python -m dbunet.cli.schemas DIR` writes the schemas as files, for tools outside dbunet.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal

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

NUMBER = {"type": "number", "minimum": 0}
TIMING = {"type": "object", "required": ["samples_ms"],
          "properties": {"samples_ms": {"type": "array", "minItems": 1, "items": NUMBER}}}  # the rest: derived

BENCH_REPORT = {  # dbunet-bench --json / --record, read back by --compare and the pytest plugin
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "dbunet-bench report",
    "type": "object",
    "required": ["schema", "backend", "precision", "config", "results", "peak_rss_mb", "machine", "versions"],
    "additionalProperties": False,
    "properties": {
        "schema": {"type": "integer"},  # its value: dbunet.bench.runner.SCHEMA
        "dbunet_version": {"type": "string"},
        "backend": NAME,
        "precision": NAME,
        "config": {"type": "string"},
        "machine": {"type": "object", "required": ["processor", "cpu_count"],
                    "properties": {"processor": {"type": "string"}, "cpu_count": {"type": "integer", "minimum": 1}}},
        "versions": {"type": "object", "additionalProperties": {"type": "string"}},
        "settings": {"type": "object"},
        "peak_rss_mb": NUMBER,
        "device_memory_mb": {"anyOf": [NUMBER, {"type": "null"}]},
        "calibration_ms": NUMBER,
        "details": {"type": "object"},
        "results": {"type": "object", "additionalProperties": TIMING},
    },
}

TRAIN_PROGRESS = {  # a training run's checkpoint/progress.json, read back by --resume
    "type": "object",
    "required": ["stage", "step", "config"],
    "properties": {
        "stage": NAME,  # one of dbunet.train.trainer.STAGES
        "step": {"type": "integer", "minimum": 0},  # steps of that stage done
        "config": {"type": "object"},  # a ModelConfig, checked by its dataclasses
        "plan": {"type": "object"},  # the TrainPlan it began with (absent in runs begun before it was kept)
    },
}

SCHEMAS = {"manifest": MANIFEST, "engines-index": ENGINES_INDEX, "bench-report": BENCH_REPORT}
MAX_INT = 2**31 - 1  # bound on every integer a config holds


def type_schema(tp: Any) -> dict:
    """The JSON Schema of a value annotated `tp`: dataclasses, tuples, Literal, unions, int, float, bool, str."""
    if dataclasses.is_dataclass(tp):
        return dataclass_schema(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": type_schema(args[0])}
        return {"type": "array", "prefixItems": [type_schema(a) for a in args], "items": False,
                "minItems": len(args)}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        arms = [type_schema(a) for a in args]
        if all("enum" in a or a == {"type": "null"} for a in arms):  # Literal[...] | None: one list of choices
            return {"enum": [v for a in arms for v in a.get("enum", [None])]}
        return {"anyOf": arms}
    simple = {bool: {"type": "boolean"}, str: {"type": "string"}, float: {"type": "number"},
              int: {"type": "integer", "minimum": -MAX_INT, "maximum": MAX_INT}, type(None): {"type": "null"}}
    if tp in simple:
        return simple[tp]
    raise TypeError(f"no JSON Schema for {tp!r}")


@functools.cache
def dataclass_schema(cls: type) -> dict:
    """An object with the dataclass's fields, nothing else; those without a default are required (so a missing
    one is named by the schema, not by the constructor's TypeError)."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    required = [f.name for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    return {"type": "object", "additionalProperties": False, **({"required": required} if required else {}),
            "properties": {f.name: type_schema(hints[f.name]) for f in fields}}


@functools.cache
def _validator():
    """Draft 2020-12, with Python tuples as arrays (a config's to_dict() holds tuples before it is JSON)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine("array", lambda _, value: isinstance(value, list | tuple))
    return jsonschema.validators.extend(base, type_checker=checker)


def problem(document: Any, schema: dict) -> str | None:
    """None if `document` follows `schema`; else the most relevant violation, in one line with its place."""
    import jsonschema

    validator = _validator()(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "top level"
    return f"{where}: {error.message[:160]}"


def published() -> dict[str, dict]:
    """Every schema a tool outside dbunet may want, by file stem: the documents' and the model config's."""
    from dbunet.config import ModelConfig  # the config's schema is generated from its dataclasses

    return {**SCHEMAS, "model-config": dataclass_schema(ModelConfig)}
