"""python -m dbunet.cli.schemas DIR: the JSON Schemas of what dbunet writes, as files for tools outside dbunet."""

from __future__ import annotations

import argparse
import json
import sys

from dbunet import atomic, schemas
from dbunet.cli.common import Parser, guarded, path_arg
from dbunet.errors import InputError


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m dbunet.cli.schemas",
               description="Write the JSON Schemas of the documents dbunet writes and reads back (manifest.json, "
                           "the engines index, a dbunet-bench report, the model config) into DIR, one "
                           "NAME.schema.json each, for tools outside dbunet.")
    p.add_argument("dir", type=path_arg, metavar="DIR", help="folder to write them into (created if missing)")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    folder = parser().parse_args(argv).dir
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; give a folder for the schema files")
    folder.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas.published().items():
        atomic.write_text(folder / f"{name}.schema.json", json.dumps(schema, indent=2) + "\n")
        print(f"wrote {folder / f'{name}.schema.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
