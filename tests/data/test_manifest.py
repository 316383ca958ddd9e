import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speechkd.data.manifest import ManifestError, Utterance, read_manifest, validate_manifest, write_manifest

ident = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
utt = st.builds(
    Utterance, id=ident, audio_filepath=ident.map(lambda s: f"audio/{s}.flac"),
    duration=st.floats(0, 100, allow_nan=False).map(lambda x: round(x, 4)),
    text=st.text(alphabet="abc' ", max_size=20), speaker=ident,
    offset=st.sampled_from([0.0, 1.5]),
    extra=st.dictionaries(st.sampled_from(["lang", "engine", "score"]), st.one_of(st.integers(), ident), max_size=2),
)


@settings(max_examples=50, deadline=None)
@given(st.lists(utt, max_size=5, unique_by=lambda u: u.id))
def test_round_trip(tmp_path_factory, utts):
    p = tmp_path_factory.mktemp("m") / "m.jsonl"
    write_manifest(utts, p)
    assert read_manifest(p) == utts
    # and byte-stable on a second write
    first = p.read_bytes()
    write_manifest(read_manifest(p), p)
    assert p.read_bytes() == first


def _write(tmp_path, lines):
    p = tmp_path / "m.jsonl"
    p.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return p


GOOD = {"audio_filepath": "a.wav", "duration": 1.0, "text": "hi", "id": "u1"}


@pytest.mark.parametrize("bad, field", [
    ({**GOOD, "duration": -1}, "'duration'"),
    ({**GOOD, "duration": "long"}, "'duration'"),
    ({**GOOD, "text": 7}, "'text'"),  # absent is an untranscribed row; present, it is a string
    ({**GOOD, "audio_filepath": ""}, "'audio_filepath'"),
    ({**GOOD, "id": "has space"}, "'id'"),
    ({**GOOD, "offset": -2}, "'offset'"),
    ("{not json", "invalid JSON"),
    ([1, 2], "JSON object"),
])
def test_errors_name_file_line_and_field(tmp_path, bad, field):
    p = _write(tmp_path, [GOOD | {"id": "u0"}, bad])
    with pytest.raises(ManifestError) as e:
        read_manifest(p)
    assert f"{p}:2:" in str(e.value) and field in str(e.value)


def test_duplicate_ids_and_missing_audio(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    p = _write(tmp_path, [GOOD, GOOD | {"audio_filepath": "b.wav"}])
    with pytest.raises(ManifestError, match="duplicate id 'u1'"):
        read_manifest(p)
    problems = validate_manifest(p)
    assert any("duplicate id" in x for x in problems) and any("'b.wav' does not exist" in x for x in problems)


def test_relative_paths_resolve_against_manifest_folder(tmp_path):
    p = _write(tmp_path, [GOOD])
    assert read_manifest(p)[0].resolve_audio(p.parent) == tmp_path / "a.wav"
