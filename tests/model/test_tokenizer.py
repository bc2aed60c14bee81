from model.tokenizer import UNK_ID, token_ids, train_tokenizer


def test_raw_and_bimpm_tokenized_text_give_the_same_tokens() -> None:
    tokenizer = train_tokenizer(["Why can't I sleep? What's the U.S. capital?"] * 5, vocab_size=300, min_frequency=1)
    raw = tokenizer.encode("Why can't I sleep? What's the café’s name?").tokens
    tokenized = tokenizer.encode("Why ca n't I sleep ? What 's the cafe 's name ?").tokens
    assert raw == tokenized
    assert raw[:3] == ["why", "ca", "n"]


def test_unknown_words_and_empty_text() -> None:
    tokenizer = train_tokenizer(["hello world"] * 5, vocab_size=100, min_frequency=1)
    ids = token_ids(tokenizer, ["zzzz qqq", "", "hello " * 100], max_tokens=8)
    assert ids[1] == [UNK_ID]  # never an empty sequence
    assert len(ids[2]) == 8  # truncated to max_tokens
    assert all(isinstance(i, int) for i in ids[0]) and ids[0]
