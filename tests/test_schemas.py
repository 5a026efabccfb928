"""The JSON Schemas written for tools outside dbunet describe what dbunet writes, and refuse what it refuses."""

import json

import jsonschema
import pytest

from dbunet import schemas


def test_written_schemas_validate_a_real_export_and_refuse_a_changed_one(tiny_artifacts, tmp_path):
    assert schemas.main([str(tmp_path)]) == 0
    written = {p.name: json.loads(p.read_text()) for p in tmp_path.iterdir()}
    assert set(written) == {"manifest.schema.json", "engines-index.schema.json", "bench-report.schema.json",
                            "model-config.schema.json"}
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    jsonschema.validate(manifest, written["manifest.schema.json"])
    jsonschema.validate(manifest["config"], written["model-config.schema.json"])
    manifest["artifacts"][0]["io"]["inputs"][0]["dims"] = [10**12]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest, written["manifest.schema.json"])
    manifest["config"]["text"]["hidden_size"] = "wide"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest["config"], written["model-config.schema.json"])
