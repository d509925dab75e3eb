"""Names and fields of the CornerPool TensorRT plugin, shared with the ONNX export.

The ONNX exporter writes ``cornernet::CornerPool`` nodes whose attributes are :data:`FIELDS` (plus
``plugin_version`` / ``plugin_namespace``); the plugin's creator declares the same fields in C++
(``kFIELDS`` in ``cornerPoolPlugin/cornerPoolPlugin.cpp``). :func:`parse_plugin_fields` reads that C++ list so
a CPU test can check that both sides agree (``../shared/reference/contracts.md``).
"""

from __future__ import annotations

import re
from pathlib import Path

PLUGIN_NAME = "CornerPool"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "cornernet"

#: Values of the ``mode`` field: the side the running max goes towards (mmcv's numbering).
MODES = {"top": 0, "bottom": 1, "left": 2, "right": 3}

#: Plugin field name -> TensorRT ``PluginFieldType`` name. An ONNX INT attribute arrives as kINT32.
FIELDS = {"mode": "kINT32"}

#: The C++ source that holds the plugin's field list.
PLUGIN_SOURCE = Path(__file__).resolve().parent / "cornerPoolPlugin" / "cornerPoolPlugin.cpp"

_BLOCK = re.compile(r"//\s*BEGIN PLUGIN FIELDS(?P<body>.*?)//\s*END PLUGIN FIELDS", re.S)
_ENTRY = re.compile(r'\{\s*"(?P<name>[^"]+)"\s*,\s*(?:nvinfer1::)?PluginFieldType::(?P<type>k[A-Z0-9_]+)\s*,')


def parse_plugin_fields(source_text: str) -> dict[str, str]:
    """Read the plugin's field list from its C++ source.

    Args:
        source_text: text of ``cornerPoolPlugin.cpp``; the list sits between the comments
            ``// BEGIN PLUGIN FIELDS`` and ``// END PLUGIN FIELDS``, one ``{"name", PluginFieldType::kX, ...}``
            entry per field.

    Returns:
        Field name -> ``PluginFieldType`` name (e.g. ``{"mode": "kINT32"}``), in source order.

    Raises:
        ValueError: the markers are missing, appear more than once, or enclose no entry.
    """
    blocks = [match.group("body") for match in _BLOCK.finditer(source_text)]
    if len(blocks) != 1:
        raise ValueError(
            f"expected one '// BEGIN PLUGIN FIELDS ... // END PLUGIN FIELDS' block, found {len(blocks)}"
        )
    body = re.sub(r"//[^\n]*", "", blocks[0])  # comments may mention braces and quotes
    fields: dict[str, str] = {}
    for match in _ENTRY.finditer(body):
        name = match.group("name")
        if name in fields:
            raise ValueError(f"plugin field {name!r} is listed twice")
        fields[name] = match.group("type")
    if not fields:
        raise ValueError("the plugin field block has no '{\"name\", PluginFieldType::kX, ...}' entry")
    return fields
