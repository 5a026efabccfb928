"""The JSON Schemas written for tools outside dbunet describe what dbunet writes, and refuse what it refuses."""

import json

import jsonschema
import pytest

from dbunet.cli.schemas import main as write_schemas


def test_the_schemas_command_explains_itself_and_refuses_a_file(tmp_path, monkeypatch, capsys):
    # before: `--help` wrote the schemas into a new folder named "--help", and a file as DIR was a traceback
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        write_schemas(["--help"])
    assert exc.value.code == 0 and "JSON Schemas" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "notes").write_text("mine")
    assert write_schemas([str(tmp_path / "notes")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'notes'} is a file; give a folder for the schema files\n"
    assert (tmp_path / "notes").read_text() == "mine"


def test_written_schemas_validate_a_real_export_and_refuse_a_changed_one(tiny_artifacts, tmp_path):
    assert write_schemas([str(tmp_path)]) == 0
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
