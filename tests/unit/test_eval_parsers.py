"""ShopBench parsers on cases worked out by hand from the starter kit's rules (v0.1.1)."""
from __future__ import annotations

import pytest

from elama.eval.parsers import MAX_RESPONSE_CHARACTERS, is_unparsed, parse


@pytest.mark.parametrize("text, expected", [
    ("", -1), (" ", -1), ("\n ", -1), ("a", -1),
    (" 2. because", 2), ("10", 1), ("\n 3", 3), ("3", 3), ("Answer: 2", -1),
])
def test_multiple_choice(text, expected):
    assert parse("multiple-choice", text) == expected


@pytest.mark.parametrize("text, expected", [
    ("1, 2, 3, 4, 5", [1, 2, 3, 4, 5]),
    ("[1, 2, 3, 4, 5]", [1, 2, 3, 4, 5]),
    ("1, 2, 2, 3", []),                      # a duplicate empties the answer
    ("3, 1, 3", []),
    ("1, 7, 2, 6, 3", [1, 2, 3]),            # values above 5 are dropped
    ("5, 4, 3, 2, 1, 0", [5, 4, 3, 2, 1]),   # the first five
    ("1, 2, 3, 4, 5, 1", [1, 2, 3, 4, 5]),   # a repeat after the fifth is not seen
    ("1 2", []),                              # no comma: one field, not an integer
    ("The answer is: 4, 2", [4, 2]),
    (",1,2", [1, 2]),
    ("\n", []),
])
def test_ranking(text, expected):
    assert parse("ranking", text) == expected


@pytest.mark.parametrize("text, expected", [
    ("100, 200, 300, 400", [100, 200, 300]),   # the first 3 kept
    ("5, 5, 7", [5, 5, 7]),                    # repeats kept
    ("100,   200, \n\n 300", [100, 200, 300]),
    ("100, 200, jjhg", [100, 200]),
    ("\n \n", []),
])
def test_retrieval(text, expected):
    assert parse("retrieval", text) == expected


@pytest.mark.parametrize("text, expected", [
    ("['New York', 'Amazon']", ["New York", "Amazon"]),          # a Python list literal
    ('["a, b", "c"]', ["a, b", "c"]),                             # commas inside the literal
    ("New York, ShopBench , Amazon", ["New York", "ShopBench", "Amazon"]),  # comma text
    ("[New York, Amazon]", ["[New York", "Amazon]"]),             # not a literal: brackets stay
    ("['a', 1]", ["['a'", "1]"]),                                 # not all strings: comma text
    ("\n, New York, ShopBench", ["New York", "ShopBench"]),
    (" ", []),
])
def test_named_entities(text, expected):
    assert parse("named_entity_recognition", text) == expected


def test_generation_strips():
    assert parse("generation", "\nThe answer is \n\n good.\n\n") == "The answer is \n\n good."


def test_only_the_first_5000_characters_count():
    assert MAX_RESPONSE_CHARACTERS == 5000
    assert parse("multiple-choice", " " * 4999 + "3") == 3
    assert parse("multiple-choice", " " * 5000 + "3") == -1
    assert parse("retrieval", "1," + " " * 4998 + "2,3") == [1]
    assert len(parse("generation", "x" * 6000)) == 5000


def test_unparsed_and_bad_task_type():
    assert is_unparsed("multiple-choice", parse("multiple-choice", ""))
    assert not is_unparsed("multiple-choice", parse("multiple-choice", "0"))
    assert is_unparsed("ranking", parse("ranking", "1, 1"))
    assert is_unparsed("generation", parse("generation", "  \n"))
    with pytest.raises(ValueError, match="unknown task_type 'multichoice'"):
        parse("multichoice", "1")
