"""The discipline taxonomy: load and validate it, navigate it, edit it, import and export it.

    from builder.taxonomy import load_taxonomy
    tax = load_taxonomy("taxonomy")          # raises ValidationError listing file:line problems
    for node in tax.leaves("calculus"):
        print(tax.path_ids(node), node.name)

Edits keep comments and formatting (``TaxonomyEditor``); ``import_csv``/``import_json`` build
a taxonomy from a spreadsheet or a nested JSON outline; ``export_taxonomy`` writes JSON
(networkx node-link), GraphML, Mermaid or Graphviz dot.
"""

from __future__ import annotations

from builder.taxonomy.edit import DEFAULT_LEVELS, NEW_DISCIPLINE, TaxonomyEditor
from builder.taxonomy.export import (
    EXPORT_FORMATS,
    export_taxonomy,
    to_dot,
    to_graphml,
    to_mermaid,
    to_node_link,
)
from builder.taxonomy.io import (
    ImportResult,
    OutlineNode,
    assign_ids,
    import_taxonomy,
    outline_to_yaml,
    read_csv_outline,
    read_json_outline,
)
from builder.taxonomy.model import DEFAULT_STATUS, STATUSES, Node, Taxonomy, UnknownNodeError
from builder.taxonomy.validate import (
    NODE_KEYS,
    check_taxonomy,
    check_texts,
    discover_files,
    is_slug,
    load_taxonomy,
    slugify,
    validate_taxonomy,
)

__all__ = [
    "DEFAULT_LEVELS",
    "DEFAULT_STATUS",
    "EXPORT_FORMATS",
    "NEW_DISCIPLINE",
    "NODE_KEYS",
    "STATUSES",
    "ImportResult",
    "Node",
    "OutlineNode",
    "Taxonomy",
    "TaxonomyEditor",
    "UnknownNodeError",
    "assign_ids",
    "check_taxonomy",
    "check_texts",
    "export_taxonomy",
    "import_taxonomy",
    "outline_to_yaml",
    "read_csv_outline",
    "read_json_outline",
    "to_dot",
    "to_graphml",
    "to_mermaid",
    "to_node_link",
    "discover_files",
    "is_slug",
    "load_taxonomy",
    "slugify",
    "validate_taxonomy",
]
