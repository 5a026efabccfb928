"""Reading a user's model files (a dbunet model folder, a diffusers folder, a training checkpoint): anything
damaged — truncated, empty, not JSON, not UTF-8, the wrong kind of JSON — is one WeightsError naming the file,
never the parser's traceback."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from dbunet import jsonfile
from dbunet.errors import WeightsError


class JsonObject(dict):
    """A config file's object: a key it lacks is a WeightsError naming the file, not a KeyError traceback."""

    def __init__(self, data: dict, path: Path) -> None:
        super().__init__(data)
        self.path = path

    def __missing__(self, key: str):
        raise WeightsError(f"{self.path}: no {key!r} (a diffusers config of this kind has one)")

    def flag(self, key: str, default: bool) -> bool:
        """A true/false setting; a string such as "false" would read as true, so anything but a JSON bool is refused."""
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise WeightsError(f"{self.path}: {key} must be true or false, got {value!r}")
        return value

    def sequence(self, key: str) -> tuple:
        """A key that must hold a list (channels per level...), as a tuple."""
        value = self[key]
        if not isinstance(value, list):
            raise WeightsError(f"{self.path}: {key} must be a list, got {value!r}")
        return tuple(value)


def read_json_object(path: Path) -> JsonObject:
    if not path.is_file():
        raise WeightsError(f"missing {path}")
    data = jsonfile.loads(path.read_bytes(), lambda why: WeightsError(f"{path}: {why}"))
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return JsonObject(data, path)


def read_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=device)
    except SafetensorError as exc:  # truncated, empty, or not safetensors at all
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None


def read_sharded_safetensors(index: Path) -> dict[str, torch.Tensor]:
    """The tensors of a sharded checkpoint (`<name>.safetensors.index.json`, as diffusers and transformers save one
    past their shard size: an SDXL UNet in FP32 is two shards). The index must name shards in its own folder, and
    every tensor it maps must be in the shard it names, once."""
    weight_map = read_json_object(index).get("weight_map")
    if not (isinstance(weight_map, dict) and weight_map
            and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
        raise WeightsError(f"{index}: weight_map must map tensor names to shard files")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or shard in (".", ".."):  # a path would read a file outside the folder
            raise WeightsError(f"{index}: shard {shard!r} is not a file name in its folder")
        tensors = read_safetensors(index.parent / shard) if (index.parent / shard).is_file() else None
        if tensors is None:
            raise WeightsError(f"{index}: its shard {shard} is missing")
        listed = {name for name, file in weight_map.items() if file == shard}
        if listed - tensors.keys():
            raise WeightsError(f"{index.parent / shard} lacks {sorted(listed - tensors.keys())[0]!r}, which "
                               f"{index.name} puts there")
        twice = state.keys() & tensors.keys()
        if twice:
            raise WeightsError(f"{index.parent}: {sorted(twice)[0]!r} is in more than one shard")
        state |= tensors
    unlisted = state.keys() - weight_map.keys()
    if unlisted:
        raise WeightsError(f"{index}: {sorted(unlisted)[0]!r} is in a shard but not in the index")
    return state


def read_model_index(root: Path) -> JsonObject:
    """The folder's model_index.json (its pipeline's components and flags); empty where the folder has none."""
    index = root / "model_index.json"
    return read_json_object(index) if index.is_file() else JsonObject({}, index)
