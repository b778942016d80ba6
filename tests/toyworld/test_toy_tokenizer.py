from __future__ import annotations

import random

import pytest

from viewneti_backend.toyworld.captions import (
    azimuth_bucket,
    caption,
    describe,
    elevation_bucket,
    view_phrase,
    vocabulary,
)
from viewneti_backend.toyworld.renderer import ToyObject
from viewneti_backend.toyworld.tokenizer import BOS, EOS, load_tokenizer, write_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = write_tokenizer(tmp_path_factory.mktemp("tok"))
    return load_tokenizer(folder)


def test_tokenizer_is_clip_compatible(tok):
    from transformers import CLIPTokenizer

    assert isinstance(tok, CLIPTokenizer)
    assert tok.model_max_length == 77
    assert 900 <= len(tok) <= 1200
    assert tok.bos_token == BOS and tok.eos_token == EOS and tok.pad_token == "!"
    ids = tok("a photo of an object", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and ids[6] == tok.eos_token_id and ids[7] == tok.pad_token_id


def test_every_vocabulary_word_is_one_token(tok):
    for w in vocabulary():
        ids = tok(w, add_special_tokens=False).input_ids
        assert len(ids) == 1, (w, tok.convert_ids_to_tokens(ids))
        assert tok.convert_ids_to_tokens(ids)[0] == w + "</w>"
    for ref in ("view", "object"):  # the mapper's reference words
        assert len(tok(ref, add_special_tokens=False).input_ids) == 1


def test_unseen_words_still_tokenize(tok):
    ids = tok("zebra quixotic", add_special_tokens=False).input_ids
    assert len(ids) > 2
    assert tok.decode(ids) == "zebra quixotic"
    assert tok.unk_token_id not in ids


def test_placeholder_tokens_can_be_added(tok):
    t = load_tokenizer(tok.name_or_path)
    n = t.add_tokens(["<view>", "<object>"])
    assert n == 2
    ids = t("<view>. A photo of a <object>", add_special_tokens=False).input_ids
    assert t.convert_ids_to_tokens(ids)[0] == "<view>" and t.convert_ids_to_tokens(ids)[-1] == "<object>"


def test_captions_use_the_vocabulary_and_fit(tok):
    vocab = set(vocabulary())
    rng = random.Random(0)
    for s in range(200):
        obj = ToyObject.from_seed(s)
        c = caption(obj, rng.uniform(0, 360), rng.uniform(10, 50), rng)
        assert set(c.replace(",", " ").split()) <= vocab, c
        assert len(tok(c).input_ids) <= 77
    assert describe(ToyObject.from_seed(0)).startswith("a cyan box with a red front")


def test_view_phrases_are_coarse():
    assert azimuth_bucket(0) == "front" and azimuth_bucket(359) == "front"
    assert azimuth_bucket(90) == "right" and azimuth_bucket(270) == "left" and azimuth_bucket(180) == "back"
    assert azimuth_bucket(40) == "front right" and azimuth_bucket(-40) == "front left"
    assert elevation_bucket(12) == "from a low angle" and elevation_bucket(45) == "from high above"
    assert view_phrase(0.0, 12.0) == view_phrase(10.0, 20.0)  # no exact pose in captions
    rng = random.Random(1)
    with_view = sum("seen from" in caption(ToyObject.from_seed(1), 0, 30, rng) for _ in range(1000))
    assert 200 < with_view < 400
