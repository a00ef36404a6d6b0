"""
The decontamination rule (sources.Decontaminator): hand-made edits the old 8-gram / 80%
rule let through, stock wording it must not drop, and bounds on the rates that
dev/decontam_measure.py measures on the real rows (skipped without ../shared/data).

    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 python -m pytest tests/test_decontam.py -q
"""
import os
import sys

import pytest

import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
sys.path.insert(0, os.path.join(ROOT, "dev"))
import decontam_measure as dm  # noqa: E402

# hand-made eval problems in MBPP's wording, with asserts
EVAL = {"mbpp": [
    {"text": "Write a function to check whether the given element is present in the list of tuples.",
     "tests": ["assert check_element([(1, 2), (3, 4)], 3) == True",
               "assert check_element([(1, 2), (3, 4)], 5) == False",
               "assert check_element([], 1) == False"]},
    {"text": "Write a python function to find the sum of even numbers in a list.",
     "tests": ["assert sum_even([1, 2, 3, 4]) == 6", "assert sum_even([1, 3]) == 0"]},
    {"text": "Write a function to find the maximum of two numbers.",
     "tests": ["assert maximum(1, 2) == 2", "assert maximum(5, 3) == 5"]},
]}
PRESENT = EVAL["mbpp"][0]


def both():
    return dm.OldRule(EVAL), sources.Decontaminator(EVAL)


def test_edits_the_old_rule_let_through_are_dropped():
    old, new = both()
    t = PRESENT["text"]
    renamed = [a.replace("check_element", "is_in") for a in PRESENT["tests"]]
    cases = [
        (t.replace("a function", "a python function"), None),               # inserted "python"
        (t.replace("the ", ""), None),                                        # articles dropped
        ("Check whether the given element is present in the list of tuples - "
         "write a function for this.", None),                                 # clauses reordered
        (t.replace("present", "found"), PRESENT["tests"]),                    # one word, with its asserts
        (t.replace("present", "found").replace("check", "determine"), renamed),   # synonyms, renamed
    ]
    for text, tests in cases:
        assert old.check(text, tests) is None, text
        assert new.check(text, tests) == "mbpp", text
    assert new.check(t) == new.check(t.upper().replace(" ", "  \n")) == "mbpp"   # verbatim, case, spacing


def test_stock_wording_and_sibling_tasks_are_kept():
    _, new = both()
    # the same stock opening and most words, another task and other asserts
    assert new.check("Write a python function to find the sum of odd numbers in a list.",
                     ["assert sum_odd([1, 2, 3, 4]) == 4", "assert sum_odd([2]) == 0"]) is None
    assert new.check("Write a function to check whether the given element is present in the list of strings.",
                     ["assert check_str(['a', 'b'], 'a') == True"]) is None
    # a short eval text inside a longer training text is no copy
    assert new.check("Write a function to find the maximum of two numbers in a list of tuples.",
                     ["assert max_pair([(1, 2)]) == 2"]) is None
    # other problems that share only the stock words
    for text in ("Write a python function to count the vowels of a string.",
                 "Write a function to find the perimeter of a square.",
                 "Write a function to check whether the given number is odd or not."):
        assert new.check(text) is None, text
    # one shared assert (of two) is not enough: f(2) == 2 holds for many tasks
    assert new.check("Write a function to reverse a string.", ["assert maximum(1, 2) == 2"]) is None


def test_assert_signatures_ignore_name_spacing_and_quotes():
    a = sources.assert_signatures(['assert remove_Occ("hello","l") == "heo"'])
    b = sources.assert_signatures(["assert strip_char( 'hello', 'l' )=='heo'"])
    assert a == b == {"assert f('hello', 'l') == 'heo'"}
    assert sources.assert_signatures(["assert sum(10,15) == 6"]) == {"assert f(10, 15) == 6"}   # MBPP 126
    assert sources.assert_signatures(["not python ("]) == frozenset()


def test_meta_names_the_rule():
    m = sources.Decontaminator(EVAL).meta()
    assert m["n"] == 3 and m["threshold"] == 0.9 and m["eval_sets"] == {"mbpp": 3}
    assert "assert" in m["rule"]


@pytest.fixture(scope="module")
def measured():
    if not os.path.exists(os.path.join(SHARED, "mbpp", "mbpp.jsonl")):
        pytest.skip(f"{SHARED} not present (the shared offline copy of the benchmark data)")
    return dm.measure(SHARED, {"old": dm.OldRule, "chosen": sources.Decontaminator}, log=lambda *a: None)


def rate(res, name, kind, with_tests):
    key = (name, kind, with_tests)
    return res["planted"][key] / res["planted_n"][key]


def test_real_rows_drop_rates(measured):
    new, old = measured["chosen"], measured["old"]
    assert new["planted_n"][("mbpp", "verbatim", False)] == 500
    assert new["planted_n"][("humaneval", "verbatim", False)] == 164
    for name in ("mbpp", "humaneval"):
        for kind in dm.EDITS:
            # with the asserts an MBPP-format row carries: nearly every edit of every problem
            assert rate(new, name, kind, True) >= 0.97, (name, kind)
            assert rate(new, name, kind, True) >= rate(old, name, kind, True), (name, kind)
        # text alone: what carries no task is ignored
        for kind in ("verbatim", "case_whitespace", "insert_python", "drop_articles", "reorder"):
            assert rate(new, name, kind, False) == 1.0, (name, kind)
    # the edits the issue named, text and asserts: the old rule dropped almost none
    for kind in ("insert_python", "one_word_swap", "synonyms"):
        assert rate(old, "mbpp", kind, True) < 0.25 and rate(new, "mbpp", kind, True) > 0.97
    # a long text (HumanEval) keeps a one-word swap visible on its own
    assert rate(new, "humaneval", "one_word_swap", False) >= 0.95


def test_real_rows_false_drops(measured):
    new = measured["chosen"]
    dropped, n = new["clean"]["mbpp_not_test"]
    assert n == 445 and dropped <= 5          # MBPP prompt/validation/train minus NEAR_COPIES
    dropped, n = new["clean"]["gsm8k_train"]
    assert n == 7473 and dropped <= 3
    # the near-copies in MBPP itself (same task as a test problem): more dropped than before
    assert new["copies"][0] >= measured["old"]["copies"][0]
