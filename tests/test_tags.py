import pytest

from cas import InvalidTag
from cas.content import tags


@pytest.mark.parametrize(
    "tag,expected",
    [
        ("bert", ("bert", "latest")),
        ("bert:v1", ("bert", "v1")),
        ("my-model_2.0:1.2.3", ("my-model_2.0", "1.2.3")),
        ("a:b", ("a", "b")),
    ],
)
def test_valid_tags(tag, expected):
    assert tuple(tags.parse(tag)) == expected


@pytest.mark.parametrize(
    "tag,message",
    [
        ("Bert", "lower-case"),
        ("bert:V1", "lower-case"),
        ("my model", "lower-case"),
        ("bert: v1", "lower-case"),
        ("", "name is empty"),
        ("bert:", "version is empty"),
        (":v1", "name is empty"),
        ("-bert", "starting and ending"),
        ("bert.", "starting and ending"),
        ("a" * 64, "at most 63"),
        ("bert:" + "1" * 64, "at most 63"),
        ("bert:v1:v2", "lower-case"),
        ("../etc", "starting and ending"),
    ],
)
def test_invalid_tags(tag, message):
    with pytest.raises(InvalidTag, match=message):
        tags.parse(tag)


def test_latest_is_reserved_as_a_stored_version():
    with pytest.raises(InvalidTag, match="reserved"):
        tags.validate_version("latest")


def test_non_string_tag():
    with pytest.raises(InvalidTag, match="expected a string"):
        tags.parse(42)


def test_generated_versions_are_valid_unique_and_time_sorted():
    versions = [tags.new_version() for _ in range(1000)]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)
    for v in versions[:10]:
        assert tags.validate_version(v) == v
        assert len(v) == 16
