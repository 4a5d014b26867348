import json

import pytest

from auteur.builds import BuildError, build_space
from auteur.plan import VisualSpace
from auteur.tokenizers import byte_level_tokenizer


def test_build_space_reads_the_manifest_and_refuses_what_is_not_a_build(tmp_path):
    with pytest.raises(BuildError, match="not a CookGen build"):
        build_space(tmp_path)
    (tmp_path / "cookgen.json").write_text(json.dumps({"embedding_space": None}))
    assert build_space(tmp_path) is None  # a text-only build
    (tmp_path / "cookgen.json").write_text(json.dumps({"embedding_space": {"name": "enc/x", "dim": 8}}))
    assert build_space(tmp_path) == VisualSpace("enc/x", 8)
    for bad in ("{not json", json.dumps({"embedding_space": {"name": "x"}}), json.dumps([1])):
        (tmp_path / "cookgen.json").write_text(bad)
        with pytest.raises(BuildError, match="not a valid CookGen manifest"):
            build_space(tmp_path)


def test_byte_level_tokenizer_round_trips_with_fixed_ids():
    tok = byte_level_tokenizer(16, extra_specials=["<s>"])
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2) and len(tok) == 260
    ids = tok("crème brûlée")["input_ids"]
    assert ids[-1] == 1 and tok.decode(ids, skip_special_tokens=True) == "crème brûlée"
    assert len(byte_level_tokenizer()) == 259
    assert tok(["a", "abc"], padding="max_length", max_length=6)["input_ids"][0][2:] == [0, 0, 0, 0]
