"""xP3 lines are byte-equal to what pandas `to_json(orient="records", lines=True, force_ascii=False)`
writes (the `datasets` JSON writer the published xP3 files came from, facts 1.8).

The expected bytes below are written by hand from pandas' vendored ujson encoder
(`Buffer_EscapeStringUnvalidated`: `"` `\\` `/` and \\b \\f \\n \\r \\t short, other bytes below 0x20 as
lowercase \\u00xx, everything else raw); the same strings, every code point below 128 and more, are
also compared with pandas itself.
"""
import json

import pandas
import pytest

from xmtf_jax.xp3build.lines import MalformedLine, decode_line, encode_line

NASTY = [
    ("plain", "Yes", b'{"inputs":"plain","targets":"Yes"}\n'),
    ('say "hi"', "back\\slash", b'{"inputs":"say \\"hi\\"","targets":"back\\\\slash"}\n'),
    ("a/b </script>", "http://x.y/z", b'{"inputs":"a\\/b <\\/script>","targets":"http:\\/\\/x.y\\/z"}\n'),
    ("l1\nl2\tt\rr\bb\ff", "x", b'{"inputs":"l1\\nl2\\tt\\rr\\bb\\ff","targets":"x"}\n'),
    ("\x00\x01\x1f\x0b", "\x7f", b'{"inputs":"\\u0000\\u0001\\u001f\\u000b","targets":"\x7f"}\n'),
    ("caf\u00e9 \u2028 \u2029 \u4e2d", "\U0001F600 & <>",
     '{"inputs":"café \u2028 \u2029 中","targets":"😀 & <>"}\n'.encode("utf-8")),
    ("", " ", b'{"inputs":"","targets":" "}\n'),
]


@pytest.mark.parametrize("inputs,targets,expected", NASTY)
def test_encode_line_matches_pandas_bytes(inputs, targets, expected):
  assert encode_line(inputs, targets) == expected
  assert decode_line(expected) == {"inputs": inputs, "targets": targets}


def _pandas_lines(rows) -> bytes:
  return pandas.DataFrame(rows).to_json(orient="records", lines=True, force_ascii=False).encode("utf-8")


def test_encode_line_against_pandas_itself():
  every_ascii = "".join(map(chr, range(128)))
  rows = [{"inputs": i, "targets": t} for i, t, _ in NASTY]
  rows.append({"inputs": every_ascii, "targets": "\u2028\u2029\ufeff\U0001F600 \u00e9\u0301 \u05d0\u0627 \\/"})
  frame = pandas.DataFrame(rows, columns=["inputs", "targets"])
  written = frame.to_json(orient="records", lines=True, force_ascii=False)
  expected = written.encode("utf-8")
  if not expected.endswith(b"\n"):  # pandas < 2 leaves the last newline out; the datasets writer adds it
    expected += b"\n"
  assert b"".join(encode_line(r["inputs"], r["targets"]) for r in rows) == expected
  extra = pandas.DataFrame([{"inputs": "a", "targets": "b", "language": "fr/x", "config": None,
                             "n": 3}]).to_json(orient="records", lines=True, force_ascii=False)
  assert encode_line("a", "b", {"language": "fr/x", "config": None, "n": 3}) == extra.rstrip("\n").encode() + b"\n"


def test_extra_keys_follow_inputs_and_targets():
  line = encode_line("i", "t", {"language": "fr", "split": "train", "config": None, "n": 2, "ok": True})
  assert line == b'{"inputs":"i","targets":"t","language":"fr","split":"train","config":null,"n":2,"ok":true}\n'


def test_lone_surrogate_refused_like_pandas():
  with pytest.raises(UnicodeEncodeError):
    _pandas_lines([{"inputs": "bad \ud800", "targets": "x"}])
  with pytest.raises(UnicodeEncodeError):
    encode_line("bad \ud800", "x")
  with pytest.raises(TypeError, match="not float"):
    encode_line("a", "b", {"score": 0.5})


@pytest.mark.parametrize("line,reason", [
    (b'{"inputs":"a","targets":"b"}', "no newline"),
    (b'{"inputs":"a","targets":\n', "not JSON"),
    (b'["a","b"]\n', "a JSON list, not an object"),
    (b'{"inputs":"a"}\n', "no 'targets' field"),
    (b'{"inputs":"a","targets":["b"]}\n', "'targets' is a list, not a string"),
    (b'{"inputs":"\xff","targets":"b"}\n', "not UTF-8"),
    (b'\n', "empty line"),
])
def test_decode_line_names_the_problem(line, reason):
  with pytest.raises(MalformedLine, match=reason):
    decode_line(line)


def test_decoded_published_line_round_trips():
  published = '{"inputs":"Translate to French: I\\/O","targets":"E\\/S \\u0001 é"}\n'.encode("utf-8")
  row = decode_line(published)
  assert row == {"inputs": "Translate to French: I/O", "targets": "E/S \x01 é"}
  assert encode_line(**row) == published
  assert json.loads(published) == row


def test_encode_line_against_the_datasets_json_writer(tmp_path):
  """The writer xP3 itself was written with (facts 1.8: `Dataset.to_json`, records/lines, raw UTF-8)."""
  datasets = pytest.importorskip("datasets")
  rows = [{"inputs": i, "targets": t} for i, t, _ in NASTY]
  path = str(tmp_path / "x.jsonl")
  datasets.Dataset.from_list(rows).to_json(path, orient="records", lines=True, force_ascii=False)
  assert open(path, "rb").read() == b"".join(encode_line(r["inputs"], r["targets"]) for r in rows)
