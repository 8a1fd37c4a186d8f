"""The one function mediapipe's metadata writer needs and its wheel lacks: the minimum metadata-parser version.

mediapipe 1.2.2's ``mediapipe.tasks.python.metadata.metadata`` imports the compiled module
``mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`` (a pybind11 wrapper of
``mediapipe/tasks/cc/metadata/metadata_version.cc``), which the PyPI wheel does not ship, so the
metadata writers fail at import. :func:`install` registers this module under that name (in
``sys.modules`` only; nothing in site-packages is written) before the writer is imported.

:func:`get_minimum_metadata_parser_version` follows the C++ function of the same name: start at
"1.0.0" and raise the version to the schema version that introduced each member the metadata uses
(the table ``_MEMBER_VERSIONS`` is upstream's ``GetMemberVersion``). For an image classifier
(normalization process unit on the input, TENSOR_AXIS_LABELS file on the output) that is "1.0.0":
nothing newer than the first schema is used. The populator writes it into ``min_parser_version``.
"""

from __future__ import annotations

import sys
import types

MODULE_NAME = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"

# Schema members added after 1.0.0 and the version that added each (metadata_version.cc, GetMemberVersion).
_MEMBER_VERSIONS = {
    "associated_file_type_vocabulary": (1, 0, 1),
    "subgraph_input_process_units": (1, 1, 0),
    "subgraph_output_process_units": (1, 1, 0),
    "bert_tokenizer_options": (1, 1, 0),
    "sentence_piece_tokenizer_options": (1, 1, 0),
    "subgraph_input_tensor_groups": (1, 2, 0),
    "subgraph_output_tensor_groups": (1, 2, 0),
    "regex_tokenizer_options": (1, 2, 1),
    "content_audio_properties": (1, 3, 0),
    "associated_file_type_scann_index_file": (1, 4, 0),
    "associated_file_version": (1, 4, 1),
    "custom_metadata": (1, 5, 0),
}


def _items(table, name: str) -> list:
    """The entries of a flatbuffer vector field (empty when the field is absent)."""
    if getattr(table, f"{name}IsNone")():
        return []
    return [getattr(table, name)(j) for j in range(getattr(table, f"{name}Length")())]


def get_minimum_metadata_parser_version(buffer: bytes) -> str:
    """The lowest metadata-parser version that can read this ModelMetadata flatbuffer ("1.0.0" at least).

    Raises:
        ValueError: the bytes are not a ModelMetadata flatbuffer.
    """
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    buffer = bytes(buffer)
    if len(buffer) < 8 or not fb.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0):
        raise ValueError("Error occurred when getting the minimum metadata parser version of the metadata flatbuffer.")
    used: set[str] = set()

    def files(table) -> None:
        for f in _items(table, "AssociatedFiles"):
            if f.Type() == fb.AssociatedFileType.VOCABULARY:
                used.add("associated_file_type_vocabulary")
            if f.Type() == fb.AssociatedFileType.SCANN_INDEX_FILE:
                used.add("associated_file_type_scann_index_file")
            if f.Version() is not None:
                used.add("associated_file_version")

    def units(items) -> None:
        kinds = {
            fb.ProcessUnitOptions.BertTokenizerOptions: "bert_tokenizer_options",
            fb.ProcessUnitOptions.SentencePieceTokenizerOptions: "sentence_piece_tokenizer_options",
            fb.ProcessUnitOptions.RegexTokenizerOptions: "regex_tokenizer_options",
        }
        for unit in items:
            if unit.OptionsType() in kinds:
                used.add(kinds[unit.OptionsType()])

    def tensor(t) -> None:
        files(t)
        units(_items(t, "ProcessUnits"))
        content = t.Content()
        if content is not None and content.ContentPropertiesType() == fb.ContentProperties.AudioProperties:
            used.add("content_audio_properties")

    model = fb.ModelMetadata.GetRootAsModelMetadata(buffer, 0)
    for sub in _items(model, "SubgraphMetadata"):
        for t in _items(sub, "InputTensorMetadata") + _items(sub, "OutputTensorMetadata"):
            tensor(t)
        files(sub)
        for field, member in (
            ("InputProcessUnits", "subgraph_input_process_units"),
            ("OutputProcessUnits", "subgraph_output_process_units"),
        ):
            if not getattr(sub, f"{field}IsNone")():
                used.add(member)
                units(_items(sub, field))
        for field, member in (
            ("InputTensorGroups", "subgraph_input_tensor_groups"),
            ("OutputTensorGroups", "subgraph_output_tensor_groups"),
            ("CustomMetadata", "custom_metadata"),
        ):
            if not getattr(sub, f"{field}IsNone")():
                used.add(member)
    files(model)
    version = max([(1, 0, 0), *(_MEMBER_VERSIONS[m] for m in used)])
    return ".".join(str(v) for v in version)


def install() -> None:
    """Makes ``import mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`` find this function.

    Does nothing when a real compiled module is importable (a future wheel that ships it).
    """
    # `from mediapipe.tasks.cc.metadata.python import _pywrap_metadata_version` imports the parent packages
    # first; the wheel has none of them, so empty ones are registered (only those that are missing).
    parent = None
    parts = MODULE_NAME.split(".")
    for i in range(3, len(parts) + 1):
        name = ".".join(parts[:i])
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name, fromlist=["_"])
            except ImportError:
                module = types.ModuleType(name, "Registered by export.metadata_version (absent from the wheel).")
                if i < len(parts):
                    module.__path__ = []
                else:
                    module.GetMinimumMetadataParserVersion = get_minimum_metadata_parser_version
                sys.modules[name] = module
        if parent is not None and not hasattr(parent, parts[i - 1]):
            setattr(parent, parts[i - 1], module)
        parent = module
