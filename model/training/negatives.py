"""Hard negatives made from a training question itself: the same words, another meaning.

Two questions made of the same words in another order ("flights from Paris to London" / "from
London to Paris", "Why did India attack Pakistan?" / "Why did Pakistan attack India?") share
every token, so an encoder that averages its token states scores them near 1. Each rule below
rewrites a question into one that keeps its words but changes what it asks; the trainer adds the
rewrite as the question's closest negative (a column of the similarity matrix and a labelled
non-duplicate pair), and ``dupq swaps`` writes the check set the same rules make from held-out
questions (docs/model.md).

The rules, each refused where the exchange would keep the meaning:

- ``from-to``: ``from X to Y`` -> ``from Y to X`` (a direction reversed).
- ``than``: ``Is Python faster than Java?`` -> ``Is Java faster than Python?`` (a comparison
  reversed; both things named, or the subject of the verb and the end of the clause).
- ``names``: two named things (capitalised words or numbers, not the question's first word)
  exchanged, ``Why did India attack Pakistan?`` -> ``Why did Pakistan attack India?``; only
  where the question names exactly two, with a word between them.
- ``negation``: ``can't I`` -> ``can I``, ``do I`` -> ``do I not`` (a negation taken out or
  put in after the subject).

Refused: a question with a cue of a symmetric relation ("and", "or", "vs", "between",
"difference", "compare", "similar", "same", "distance", ...) for the three exchanges, since
"India and Pakistan" -> "Pakistan and India" keeps the meaning; an exchange of two equal
things; a rewrite that gives back the question.
"""

from __future__ import annotations

import random
import re
from typing import NamedTuple


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words whose presence makes an exchange of two things likely to keep the meaning: the two are
# joined, set side by side, or related both ways.
SYMMETRIC = _words(
    "and or vs vs. versus & / between difference differences different compare compared comparison similar "
    "similarity same equal equivalent distance far both either neither each other together"
)
# The first words of a question and words that are never a named thing.
_NOT_NAMES = _words("i i'm i've i'd i'll a an the what why how who when where which is are can do does lrb rrb lsb rsb")
_STOP = _words(
    "a an the to from of in on at for by with is are was were be been it its this that these those my your "
    "his her their our i you he she we they me him them us what why how who when where which there here much many"
)
_AUX = _words("is are was were am do does did can could will would should shall may might must have has had")
_SUBJECTS = _words("i you we they he she it people someone one")
# Contracted negations and what they become without their "n't"; "cannot" is one word.
_CONTRACTED = {
    "can't": "can",
    "cannot": "can",
    "won't": "will",
    "don't": "do",
    "doesn't": "does",
    "didn't": "did",
    "isn't": "is",
    "aren't": "are",
    "wasn't": "was",
    "weren't": "were",
    "couldn't": "could",
    "wouldn't": "would",
    "shouldn't": "should",
    "haven't": "have",
    "hasn't": "has",
    "hadn't": "had",
}
_COMPARATIVE = re.compile(r"^(?:\w+er|better|worse|more|less|fewer)$")
_WORD = re.compile(r"[A-Za-z0-9][\w'+#.-]*[\w+#]|[A-Za-z0-9]|[^\w\s]")


class Token(NamedTuple):
    start: int
    end: int
    text: str

    @property
    def low(self) -> str:
        return self.text.lower().replace("\u2019", "'")


class Rewrite(NamedTuple):
    rule: str
    text: str


def tokens(text: str) -> list[Token]:
    """Words (with their inner apostrophes, ``C++``, ``node.js``) and punctuation marks, with
    where each is in ``text``."""
    return [Token(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]


def _is_name(token: Token, position: int) -> bool:
    """A capitalised word (``India``, ``iPhone``, ``GRE``) or a number, not the first word."""
    text = token.text
    return position > 0 and (text[0].isdigit() or any(c.isupper() for c in text)) and token.low not in _NOT_NAMES


def _named_runs(words: list[Token]) -> list[tuple[int, int]]:
    """Runs of consecutive named words (``New York``), as token ranges [i, j)."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        if _is_name(words[i], i):
            j = i + 1
            while j < len(words) and _is_name(words[j], j):
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    return runs


def _thing_after(words: list[Token], i: int) -> tuple[int, int] | None:
    """The thing that starts at token ``i``: a run of named words, else one content word."""
    if i >= len(words) or not words[i].text[0].isalnum() or words[i].low in _STOP:
        return None
    j = i + 1
    if _is_name(words[i], i):
        while j < len(words) and _is_name(words[j], j):
            j += 1
    return i, j


def _thing_before(words: list[Token], j: int) -> tuple[int, int] | None:
    """The thing that ends just before token ``j`` (exclusive), as :func:`_thing_after`."""
    i = j - 1
    if i < 0 or not words[i].text[0].isalnum() or words[i].low in _STOP or words[i].low in _AUX:
        return None
    if _is_name(words[i], i):
        while i - 1 >= 0 and _is_name(words[i - 1], i - 1):
            i -= 1
    return i, j


def _exchange(text: str, words: list[Token], a: tuple[int, int], b: tuple[int, int]) -> str | None:
    """``text`` with the token ranges ``a`` and ``b`` (``a`` first, apart) exchanged."""
    a_start, a_end = words[a[0]].start, words[a[1] - 1].end
    b_start, b_end = words[b[0]].start, words[b[1] - 1].end
    first, second = text[a_start:a_end], text[b_start:b_end]
    if first.lower() == second.lower():
        return None
    return text[:a_start] + second + text[a_end:b_start] + first + text[b_end:]


def _symmetric(words: list[Token]) -> bool:
    return any(w.low in SYMMETRIC for w in words)


def _from_to(text: str, words: list[Token]) -> str | None:
    for k, word in enumerate(words):
        if word.low != "from":
            continue
        a = _thing_after(words, k + 1)
        if a and a[1] < len(words) and words[a[1]].low == "to":
            b = _thing_after(words, a[1] + 1)
            if b:
                return _exchange(text, words, a, b)
    return None


def _than(text: str, words: list[Token]) -> str | None:
    for k, word in enumerate(words):
        if word.low != "than" or k < 2:
            continue
        end = k - 1  # the comparative
        if not _COMPARATIVE.match(words[end].low):
            continue
        if end >= 1 and words[end - 1].low in ("more", "less"):
            end -= 1
        a = _thing_before(words, end)
        b = _thing_after(words, k + 1)
        if a and b and (_whole(words, a, b) or (_named(words, a) and _named(words, b))):
            return _exchange(text, words, a, b)
    return None


def _named(words: list[Token], span: tuple[int, int]) -> bool:
    return all(_is_name(words[i], i) for i in range(*span))


def _whole(words: list[Token], a: tuple[int, int], b: tuple[int, int]) -> bool:
    """``a`` is the subject (right after a verb like "are") and ``b`` ends the clause: "Why are
    girls smarter than boys?", not "deeper neural networks better than wider networks"."""
    after = words[b[1]].text if b[1] < len(words) else "?"
    return a[0] >= 1 and words[a[0] - 1].low in _AUX and not after[0].isalnum()


def _names(text: str, words: list[Token]) -> str | None:
    runs = _named_runs(words)
    if len(runs) != 2:
        return None  # one or three or more: which two to exchange is a guess
    if not any(w.text[0].isalnum() for w in words[runs[0][1] : runs[1][0]]):
        return None  # side by side or only punctuation between: one thing named twice ("Montauk, NY")
    return _exchange(text, words, runs[0], runs[1])


def _negation(text: str, words: list[Token]) -> str | None:
    for k, word in enumerate(words[:6]):
        low = word.low
        if low in _CONTRACTED:
            plain = _CONTRACTED[low]
            return text[: word.start] + _cased(plain, word.text) + text[word.end :]
        if low in _AUX and k + 1 < len(words):
            following = words[k + 1]
            if following.low == "not":
                return text[: word.end] + text[following.end :]
            if following.low in _SUBJECTS:
                verb = words[k + 2] if k + 2 < len(words) else None
                if verb is None or not verb.text[0].isalnum():
                    return None  # "How old are you?": no verb to negate
                if verb.low == "not":
                    return text[: following.end] + text[verb.end :]
                return text[: following.end] + " not" + text[following.end :]
    return None


def _cased(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() else word


_EXCHANGES = (("from-to", _from_to), ("than", _than), ("names", _names))


def rewrites(text: str) -> list[Rewrite]:
    """Every meaning-changing rewrite of ``text`` the rules make, one per rule at most, in the
    rules' order; none where each rule is refused."""
    words = tokens(text)
    out: list[Rewrite] = []
    seen = {text}
    symmetric = _symmetric(words)
    for rule, make in (*(() if symmetric else _EXCHANGES), ("negation", _negation)):
        new = make(text, words)
        if new is not None and new not in seen:
            seen.add(new)
            out.append(Rewrite(rule, new))
    return out


def kept_meaning(text: str) -> str | None:
    """``text`` with two named things joined by "and", "or" or "vs" exchanged (``Which is better,
    iPhone or Android?`` -> ``Which is better, Android or iPhone?``): the same words and, unlike
    :func:`rewrites`, the same meaning. None where the question has no such pair."""
    words = tokens(text)
    for k, word in enumerate(words):
        if word.low in _JOINS:
            a, b = _thing_before(words, k), _thing_after(words, k + 1)
            if a and b and _named(words, a) and _named(words, b):
                return _exchange(text, words, a, b)
    return None


_JOINS = _words("and or vs vs. versus &")


def check_pairs(questions: list[str]) -> list[tuple[int, str, str, str]]:
    """The word-order check set (``dupq swaps``) from ``questions`` held out from training: each
    question with two named things joined by "and", "or" or "vs" gives a duplicate, the two
    exchanged (:func:`kept_meaning`); each question an exchange rule rewrites gives a
    non-duplicate, its first such rewrite. Rows: (label, question, the same words reordered,
    rule)."""
    rows: list[tuple[int, str, str, str]] = []
    for text in dict.fromkeys(questions):
        same = kept_meaning(text)
        if same is not None:
            rows.append((1, text, same, "kept"))
        changed = [r for r in rewrites(text) if r.rule != "negation"]
        if changed:
            rows.append((0, text, changed[0].text, changed[0].rule))
    return rows


def choose(found: list[Rewrite], rng: random.Random) -> str | None:
    """The hard negative among a question's :func:`rewrites`, or None: an exchange where one is
    made (drawn at random among them), else the moved negation. Of the 160,072 distinct training
    texts, 36 % get a rewrite and a quarter of those an exchange: order is the lesson, so an
    exchange comes first."""
    exchanges = [r for r in found if r.rule != "negation"]
    pick = exchanges or found
    return rng.choice(pick).text if pick else None
