"""export.metadata_version: the minimum metadata-parser version, as upstream's metadata_version.cc computes it."""

import pytest

from export import metadata_version


def _buffer(**parts):
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    tensor = fb.TensorMetadataT()
    if "file_type" in parts:
        f = fb.AssociatedFileT()
        f.name, f.type, f.version = "labels.txt", parts["file_type"], parts.get("file_version")
        tensor.associatedFiles = [f]
    sub = fb.SubGraphMetadataT()
    sub.inputTensorMetadata = [tensor]
    if parts.get("custom"):
        custom = fb.CustomMetadataT()
        custom.name = "x"
        sub.customMetadata = [custom]
    if parts.get("input_units"):
        sub.inputProcessUnits = [fb.ProcessUnitT()]
    meta = fb.ModelMetadataT()
    meta.name, meta.subgraphMetadata = "m", [sub]
    builder = flatbuffers.Builder(0)
    builder.Finish(meta.Pack(builder), b"M001")
    return bytes(builder.Output())


def test_versions_follow_the_schema_members_used():
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    labels = fb.AssociatedFileType.TENSOR_AXIS_LABELS
    assert metadata_version.get_minimum_metadata_parser_version(_buffer()) == "1.0.0"
    assert metadata_version.get_minimum_metadata_parser_version(_buffer(file_type=labels)) == "1.0.0"
    vocabulary = fb.AssociatedFileType.VOCABULARY
    assert metadata_version.get_minimum_metadata_parser_version(_buffer(file_type=vocabulary)) == "1.0.1"
    assert metadata_version.get_minimum_metadata_parser_version(_buffer(input_units=True)) == "1.1.0"
    assert metadata_version.get_minimum_metadata_parser_version(_buffer(file_type=labels, file_version="2")) == "1.4.1"
    assert metadata_version.get_minimum_metadata_parser_version(_buffer(custom=True, input_units=True)) == "1.5.0"


def test_not_a_metadata_buffer_is_a_value_error():
    with pytest.raises(ValueError, match="minimum metadata parser version"):
        metadata_version.get_minimum_metadata_parser_version(b"not a flatbuffer at all")


def test_install_lets_mediapipes_writer_import():
    metadata_version.install()
    from mediapipe.tasks.cc.metadata.python import _pywrap_metadata_version
    from mediapipe.tasks.python.metadata.metadata_writers import image_classifier  # noqa: F401 (failed before)

    assert (
        _pywrap_metadata_version.GetMinimumMetadataParserVersion is metadata_version.get_minimum_metadata_parser_version
    )
