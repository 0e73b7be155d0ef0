import random

import pytest

from jaxllm.tokenizer import (
    REPLACEMENT_CHAR,
    IncrementalDetokenizer,
    StopChecker,
    _make_decode_fn,
    check_stop_strings,
    convert_ids_list_to_tokens,
    get_tokenizer,
    visible_length,
)
from tests.conftest_tokenizers import (
    MULTIBYTE_TEXT,
    byte_fallback_ids,
    byte_level_bpe,
    metaspace_bpe,
    sentencepiece_bpe,
)

TOKENIZERS = {"byte_level": byte_level_bpe, "sentencepiece": sentencepiece_bpe, "metaspace": metaspace_bpe}
CHAR_POOL = ("abcdefghij XYZ.,!?\n" "éöüßçñ" "Ωπ∑—✓" "日本語中文字符のテキスト" "🙂😀👍🚀")


@pytest.fixture(params=list(TOKENIZERS))
def tok(request):
    return TOKENIZERS[request.param]()


def decode(tok, ids, skip=True):
    return tok.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)


def stream(tok, ids, prompt=(), skip=True, rng=None):
    """Feed `ids` one at a time (or in random chunks with `rng`); return the deltas and the detokenizer."""
    detok = IncrementalDetokenizer(tok, list(prompt), skip_special_tokens=skip)
    deltas, i = [], 0
    while i < len(ids):
        step = rng.randint(1, 4) if rng else 1
        deltas.append(detok.add_tokens(ids[i:i + step]))
        i += step
    deltas.append(detok.flush())
    assert "".join(deltas) == detok.output_text
    assert detok.output_token_ids == list(ids)
    return deltas, detok


def random_text(rng, n):
    return "".join(rng.choice(CHAR_POOL) for _ in range(n))


def random_valid_ids(tok, rng, n):
    """Random ids that a model could emit for real text: special tokens, pieces that are whole
    characters, and multi-byte characters spelled by several pieces (byte-level pieces or byte-fallback
    `<0xNN>` pieces)."""
    vocab = tok.get_vocab()
    byte_ids, special = byte_fallback_ids(tok), tok.all_special_ids
    whole = [i for i in range(len(tok))
             if i not in byte_ids and i not in special and REPLACEMENT_CHAR not in decode(tok, [i])]
    ids = []
    while len(ids) < n:
        r = rng.random()
        if r < 0.05:
            ids.append(rng.choice(special))
        elif r < 0.3:
            char = rng.choice(CHAR_POOL[19:])
            if byte_ids:
                ids.extend(vocab[f"<0x{b:02X}>"] for b in char.encode())
            else:
                ids.extend(tok.encode(char, add_special_tokens=False))
        else:
            ids.append(rng.choice(whole))
    return ids


# --- loading ---------------------------------------------------------------------------------------


def test_get_tokenizer_from_local_dir(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = get_tokenizer(tmp_path)
    assert loaded.is_fast and loaded.truncation_side == "left"
    assert loaded.encode(MULTIBYTE_TEXT) == tok.encode(MULTIBYTE_TEXT)
    assert (loaded.bos_token, loaded.eos_token) == ("<s>", "</s>")
    right = get_tokenizer(str(tmp_path), tokenizer_mode="hf", truncation_side="right")
    assert right.truncation_side == "right"


def test_get_tokenizer_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="tokenizer_mode"):
        get_tokenizer(tmp_path, tokenizer_mode="mistral-ish")
    with pytest.raises(ValueError, match="Cannot use the fast tokenizer in slow tokenizer mode."):
        get_tokenizer(tmp_path, tokenizer_mode="slow", use_fast=True)


def test_fast_decode_path_matches_tokenizer_decode(tok):
    rng = random.Random(0)
    for skip in (True, False):
        fn = _make_decode_fn(tok, skip, True)
        for _ in range(20):
            ids = [rng.randrange(len(tok)) for _ in range(rng.randint(0, 30))]
            assert fn(ids) == decode(tok, ids, skip)


class _CharTokenizer:
    """A tokenizer without a Rust backend: id = code point, 0 is a special token."""

    def decode(self, ids, skip_special_tokens=False, **kwargs):
        return "".join("<s>" if i == 0 else chr(i) for i in ids if not (skip_special_tokens and i == 0))


def test_generic_decode_path():
    ids = [ord(c) for c in "héllo 日本"] + [0] + [ord("!")]
    _, detok = stream(_CharTokenizer(), ids, prompt=[ord("x")])
    assert detok.output_text == "héllo 日本!"
    _, detok = stream(_CharTokenizer(), ids, skip=False)
    assert detok.output_text == "héllo 日本<s>!"


# --- incremental detokenization --------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("skip", [True, False])
def test_random_byte_level_ids_concatenate_to_full_decode(seed, skip):
    """Any ids at all, including ones that spell invalid UTF-8."""
    tok = byte_level_bpe()
    rng = random.Random(seed)
    ids = [rng.randrange(len(tok)) for _ in range(rng.randint(200, 600))]
    _, detok = stream(tok, ids, skip=skip, rng=rng if seed % 2 else None)
    assert detok.output_text == decode(tok, ids, skip)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("skip", [True, False])
def test_random_valid_ids_concatenate_to_full_decode(tok, seed, skip):
    rng = random.Random(seed)
    ids = random_valid_ids(tok, rng, rng.randint(200, 600))
    deltas, detok = stream(tok, ids, skip=skip, rng=rng if seed % 2 else None)
    assert detok.output_text == decode(tok, ids, skip)
    assert not any(REPLACEMENT_CHAR in d for d in deltas)


@pytest.mark.parametrize("seed", range(8))
def test_valid_text_never_streams_replacement_char(tok, seed):
    rng = random.Random(seed)
    text = MULTIBYTE_TEXT if seed == 0 else random_text(rng, 300)
    ids = tok.encode(text, add_special_tokens=False)
    deltas, detok = stream(tok, ids)
    assert detok.output_text == decode(tok, ids)
    assert detok.output_text.lstrip(" ") == text.lstrip(" ")  # Metaspace "first" drops a leading space
    assert not any(REPLACEMENT_CHAR in d for d in deltas)
    # characters really are split across tokens: some tokens produce no text on their own
    assert "" in deltas[:-1]


def test_character_completed_by_later_token():
    tok = byte_level_bpe()
    ids = tok.encode("日", add_special_tokens=False)
    assert len(ids) > 1 and REPLACEMENT_CHAR in decode(tok, ids[:1])
    detok = IncrementalDetokenizer(tok, [])
    assert [detok.add_tokens(i) for i in ids] == [""] * (len(ids) - 1) + ["日"]
    assert detok.num_pending_tokens == 0 and detok.flush() == ""


def test_incomplete_character_emitted_when_final(tok):
    ids = tok.encode("ok 🙂", add_special_tokens=False)[:-1]
    detok = IncrementalDetokenizer(tok, [])
    streamed = "".join(detok.add_tokens(i) for i in ids)
    assert REPLACEMENT_CHAR not in streamed and detok.num_pending_tokens > 0
    tail = detok.flush()
    assert tail.endswith(REPLACEMENT_CHAR)
    assert streamed + tail == decode(tok, ids)
    assert detok.flush() == ""


def test_genuine_replacement_char_in_text():
    tok = byte_level_bpe()
    for text in ["a\ufffdb", "end\ufffd"]:
        ids = tok.encode(text, add_special_tokens=False)
        _, detok = stream(tok, ids)
        assert detok.output_text == text


@pytest.mark.parametrize("seed", range(6))
def test_prompt_context_keeps_concatenation(tok, seed):
    """decode(prompt) + output_text == decode(prompt + output), token by token."""
    rng = random.Random(seed)
    prompt = tok.encode(random_text(rng, 40), add_special_tokens=False)
    if seed % 3 == 0:
        prompt = [tok.bos_token_id] + prompt
    if seed % 2:
        out = random_valid_ids(tok, rng, 150)
    else:
        out = tok.encode(random_text(rng, 60), add_special_tokens=False)
    _, detok = stream(tok, out, prompt=prompt)
    assert decode(tok, prompt) + detok.output_text == decode(tok, prompt + out)


def test_random_byte_level_ids_after_prompt():
    tok = byte_level_bpe()
    rng = random.Random(7)
    prompt = tok.encode("A prompt — with ü", add_special_tokens=False)
    out = [rng.randrange(len(tok)) for _ in range(400)]
    _, detok = stream(tok, out, prompt=prompt)
    assert detok.output_text == decode(tok, out)


def test_sentencepiece_leading_space_after_prompt():
    tok = sentencepiece_bpe()
    out = tok.encode("world", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(out)[0].startswith("▁")
    prompt = tok.encode("Hello", add_special_tokens=False)
    assert stream(tok, out, prompt=prompt)[1].output_text == " world"  # as vLLM: "Hello" + " world"
    assert stream(tok, out)[1].output_text == "world" == decode(tok, out)
    assert stream(tok, out, prompt=[tok.bos_token_id])[1].output_text == "world"
    # a prompt ending in special tokens still gives the output its context
    prompt = tok.encode("Hi", add_special_tokens=False) + [tok.eos_token_id] * 8
    assert stream(tok, out, prompt=prompt)[1].output_text == " world"


def test_prompt_cut_inside_a_character_is_not_used_as_context():
    tok = byte_level_bpe()
    ids = tok.encode("日本", add_special_tokens=False)
    prompt, out = ids[:1], ids[1:]
    _, detok = stream(tok, out, prompt=prompt)
    assert detok.output_text == decode(tok, out)


def test_convert_ids_list_to_tokens(tok):
    ids = tok.encode("hello world", add_special_tokens=False)
    pieces = convert_ids_list_to_tokens(tok, ids)
    assert "".join(pieces).strip() == "hello world"
    # the first piece of " world" on its own keeps its space ("Ġw..." or "▁...")
    start = next(i for i, p in enumerate(tok.convert_ids_to_tokens(ids)) if i > 0 and p[0] in "Ġ▁")
    assert convert_ids_list_to_tokens(tok, [ids[start]])[0].startswith(" ")
    assert "".join(pieces[start:]).startswith(" w")
    assert convert_ids_list_to_tokens(tok, [tok.eos_token_id]) == ["</s>"]
    assert convert_ids_list_to_tokens(tok, []) == []


# --- stop strings ----------------------------------------------------------------------------------


def test_check_stop_strings_basic():
    assert check_stop_strings("hello world###", 3, ["###"], False) == ("hello world", "###")
    assert check_stop_strings("hello world###", 3, ["###"], True) == ("hello world###", "###")
    assert check_stop_strings("hello###tail", 5, ["###"], False) == ("hello", "###")
    assert check_stop_strings("hello", 5, ["###"], False) == ("hello", None)
    assert check_stop_strings("hello###", 0, ["###"], False) == ("hello###", None)
    assert check_stop_strings("hello###", 3, [], False) == ("hello###", None)


def test_check_stop_strings_only_searches_new_region():
    # "###" was complete before the last 2 characters arrived: not found again
    assert check_stop_strings("ab###cd", 2, ["###"], False) == ("ab###cd", None)
    # one of its characters is new: found
    assert check_stop_strings("ab###cd", 3, ["###"], False) == ("ab", "###")
    # a match spanning old and new text (across token boundaries)
    assert check_stop_strings("say STO" + "P now", 5, ["STOP"], False) == ("say ", "STOP")


def test_check_stop_strings_first_completed_wins():
    for stops in (["abcd", "bc"], ["bc", "abcd"]):
        assert check_stop_strings("xabcd", 5, stops, False) == ("xa", "bc")
    for stops in (["abc", "bc"], ["bc", "abc"]):  # same end: the one starting first
        assert check_stop_strings("xabc", 4, stops, False) == ("x", "abc")
        assert check_stop_strings("xabc", 4, stops, True) == ("xabc", "abc")
    assert check_stop_strings("1 END 2 STOP", 12, ["STOP", "END"], False) == ("1 ", "END")


def test_visible_length_holds_back_a_possible_stop_string():
    assert visible_length(5, 2, finished=False) == 3
    assert visible_length(5, 2, finished=True) == 5
    assert visible_length(5, 0, finished=False) == 5
    assert visible_length(1, 3, finished=False) == 0


def test_stop_checker_holdback_and_deltas():
    sc = StopChecker(["###"])
    assert sc.buffer_length == 2
    assert sc.append("ab#") is None
    assert sc.get_output_text(finished=False) == "a"
    assert sc.get_output_text(finished=False, delta=True) == "a"
    assert sc.append("#x") is None and sc.get_output_text(False, delta=True) == "b#"
    assert sc.append(" hi #") is None and sc.get_output_text(False, delta=True) == "#x hi"
    assert sc.append("##") == "###" and sc.stop_reason == "###"
    assert sc.output_text == "ab##x hi "
    assert sc.get_output_text(False, delta=True) == " "  # stopped: final, nothing held back
    assert sc.get_output_text(False) == "ab##x hi "
    assert sc.append("more") is None and sc.output_text == "ab##x hi "


def test_stop_checker_include_and_min_tokens():
    sc = StopChecker("END", include_stop_str_in_output=True)
    assert sc.buffer_length == 0
    assert sc.append("the END", check=False) is None  # before min_tokens: ignored
    assert sc.append(" and") is None
    assert sc.append(" EN") is None and sc.get_output_text(False) == "the END and EN"
    assert sc.append("D!") == "END" and sc.output_text == "the END and END"
    assert StopChecker(None).append("anything") is None


@pytest.mark.parametrize("seed", range(10))
def test_streaming_pipeline_matches_reference(tok, seed):
    """Token by token through detokenizer + stop checker == stop rule applied to the full text."""
    rng = random.Random(seed)
    stops = rng.sample(["wörld", "日本", "🙂x", "##", "END", "é ✓"], k=2)
    pieces = [random_text(rng, rng.randint(0, 30)) for _ in range(4)]
    text = rng.choice(stops).join(pieces) if seed % 3 else random_text(rng, 80)
    ids = tok.encode(text, add_special_tokens=False)
    full = decode(tok, ids)
    include = seed % 2 == 1
    found = [(full.find(s) + len(s), full.find(s), s) for s in stops if s in full]
    end, start, want_stop = min(found) if found else (len(full), len(full), None)
    want_text = full[:end] if include else full[:start]

    detok = IncrementalDetokenizer(tok, [])
    sc = StopChecker(stops, include)
    streamed, matched = [], None
    for i, t in enumerate(ids):
        matched = sc.append(detok.add_tokens(t))
        finished = matched is not None or i == len(ids) - 1
        if finished and matched is None:
            sc.append(detok.flush())
        streamed.append(sc.get_output_text(finished, delta=True))
        assert len(sc.get_output_text(finished)) == sum(map(len, streamed))
        if finished:
            break
    assert (matched, sc.output_text) == (want_stop, want_text)
    assert "".join(streamed) == want_text
