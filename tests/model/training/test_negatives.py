import random

import pytest

from model.training.negatives import choose, rewrites


def made(text: str) -> dict[str, str]:
    return {rule: new for rule, new in rewrites(text)}


@pytest.mark.parametrize(
    ("question", "rule", "expected"),
    [
        ("How do I get from Paris to London?", "from-to", "How do I get from London to Paris?"),
        ("Should I upgrade from Windows 7 to Windows 10?", "from-to", "Should I upgrade from Windows 10 to Windows 7?"),
        ("Is Python faster than Java?", "than", "Is Java faster than Python?"),
        ("Why are girls smarter than boys?", "than", "Why are boys smarter than girls?"),
        ("Why did India attack Pakistan?", "names", "Why did Pakistan attack India?"),
        ("Does Instagram own WhatsApp?", "names", "Does WhatsApp own Instagram?"),
        ("Why can't I sleep at night?", "negation", "Why can I sleep at night?"),
        ("Why do I feel tired?", "negation", "Why do I not feel tired?"),
        ("Why do I not feel tired?", "negation", "Why do I feel tired?"),
        ("Is it not safe to swim?", "negation", "Is it safe to swim?"),
    ],
)
def test_meaning_changing_rewrites_are_made(question: str, rule: str, expected: str) -> None:
    assert made(question)[rule] == expected


@pytest.mark.parametrize(
    ("question", "kept_meaning"),
    [
        # Joined, compared or related both ways: the exchange says the same thing.
        ("What is the difference between India and Pakistan?", "What is the difference between Pakistan and India?"),
        ("Which is better, iPhone or Android?", "Which is better, Android or iPhone?"),
        ("Python vs Java: which should I learn?", "Java vs Python: which should I learn?"),
        ("How far is Paris from London?", "How far is London from Paris?"),
        ("Is Java similar to Python?", "Is Python similar to Java?"),
        # One thing named twice, side by side.
        ("Which places in Montauk, NY are dangerous?", "Which places in NY, Montauk are dangerous?"),
        ("How do I use Latent Semantic Analysis (LSA)?", "How do I use LSA (Latent Semantic Analysis)?"),
    ],
)
def test_meaning_keeping_exchanges_are_not_made(question: str, kept_meaning: str) -> None:
    assert kept_meaning not in made(question).values()
    assert not {"from-to", "than", "names"} & made(question).keys()


@pytest.mark.parametrize(
    "question",
    [
        "How old are you?",  # nothing to exchange, no negation to move
        "What is the best way to learn guitar?",
        "Why is Quora so popular?",  # one name only
        "Is India better than India?",  # an exchange of equal things gives the question back
        "Are there more than 5 senses?",  # "there" is no thing
        "Why are deeper networks better than wider networks?",  # which words are the things is a guess
    ],
)
def test_questions_without_a_rule_get_nothing(question: str) -> None:
    assert rewrites(question) == []


def test_three_named_things_are_not_guessed_at() -> None:
    assert "names" not in made("Did Germany help Austria against Russia?")


def test_the_hard_negative_is_an_exchange_before_a_negation() -> None:
    question = "Why can't India beat Pakistan?"
    assert set(made(question)) == {"names", "negation"}
    rng = random.Random(0)
    assert {choose(rewrites(question), rng) for _ in range(20)} == {"Why can't Pakistan beat India?"}
    assert choose(rewrites("How old are you?"), rng) is None
    assert choose(rewrites("Why can't I sleep?"), rng) == "Why can I sleep?"


def test_the_check_set_pairs_each_question_with_its_words_reordered() -> None:
    from model.training.negatives import check_pairs, kept_meaning

    assert kept_meaning("Which is better, iPhone or Android?") == "Which is better, Android or iPhone?"
    assert kept_meaning("Who would win a war between India and Pakistan?") == (
        "Who would win a war between Pakistan and India?"
    )
    assert kept_meaning("How do I learn Java and become a developer?") is None  # "become" is no named thing
    rows = check_pairs(["Why did India attack Pakistan?", "Is Python or Java faster?", "How old are you?"] * 2)
    assert rows == [
        (0, "Why did India attack Pakistan?", "Why did Pakistan attack India?", "names"),
        (1, "Is Python or Java faster?", "Is Java or Python faster?", "kept"),
    ]
