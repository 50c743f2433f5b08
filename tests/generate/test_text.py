from lmstack.generate.text import IncrementalDecoder, StopMatcher

TEXT = "héllo wörld — naïve café, 日本語 and emoji 🤖👍🏽 too."


def test_incremental_decoding_never_splits_a_character(tokenizer):
    ids = tokenizer.encode(TEXT)
    # the tiny vocabulary spells multi-byte characters with several byte tokens
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    dec = IncrementalDecoder(tokenizer)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if p) > 10  # it streams, not one lump at the end


def test_incomplete_tail_is_released_by_flush(tokenizer):
    ids = tokenizer.encode("ok 🤖")
    dec = IncrementalDecoder(tokenizer)
    pieces = [dec.push(i) for i in ids[:-1]]  # drop the last byte of the emoji
    assert "\ufffd" not in "".join(pieces)
    assert dec.flush().endswith("\ufffd")


def test_stop_string_across_pieces_is_never_shown():
    m = StopMatcher(["\nUser:"])
    shown = [m.feed(p) for p in ["Hello", " there", "\n", "Us", "er", ": more"]]
    assert "".join(shown) == "Hello there"
    assert m.stopped and m.text == "Hello there"
    assert m.feed("ignored") == ""


def test_false_alarm_prefix_is_released():
    m = StopMatcher(["STOP"])
    assert m.feed("ab ST") == "ab "
    assert m.feed("ILL") == "STILL"
    assert m.feed(" S") == " "
    assert m.finish() == "S"
    assert not m.stopped


def test_earliest_of_several_stop_strings_wins():
    m = StopMatcher(["cd", "bcd"])
    assert m.feed("abcde") == "a"
    assert m.text == "a"


def test_no_stop_strings_releases_everything():
    m = StopMatcher()
    assert m.feed("abc") == "abc" and m.finish() == ""
