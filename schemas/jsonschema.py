"""JSON Schema files for producers and consumers in other languages."""

from __future__ import annotations

import json
from pathlib import Path

from genre.schemas.records import PUBLIC_RECORDS

SCHEMA_DIR = Path(__file__).parent / "jsonschema"


def render_all() -> dict[str, str]:
    """Render every public record's JSON Schema as pretty, stable JSON text."""
    out = {}
    for name, model in PUBLIC_RECORDS.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://genre.dev/schemas/{name}.json"
        out[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write the schema files into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, text in render_all().items():
        path = directory / filename
        path.write_text(text)
        paths.append(path)
    return paths
