import pytest

from fints_edge.errors import HistoryError, NoUsableItems
from fints_edge.history import HistoryItem
from fints_edge.learn.pairs import FormAwareRougeL, RougeL, build_pairs, others_negative


def test_rouge_l_matches_hand_computation():
    # LCS("the cat sat", "the cat ran") = 2 tokens; P = R = 2/3 -> F1 = 2/3
    assert RougeL()("the cat sat", "the cat ran") == pytest.approx(2 / 3)


def test_generated_negatives_are_filtered_with_a_retry():
    items = [HistoryItem("q1", "sunny skies all week"), HistoryItem("q2", "market prices fall")]
    calls = []

    def negative(text, attempt):
        calls.append((text, attempt))
        if text == "q1":
            return "sunny skies all week long" if attempt == 0 else "rain later"
        return "market prices fall sharply"  # always too close

    pairs, report = build_pairs(items, negative, threshold=0.15, progress=False)
    # q1: the second try passes; q2: no try passes, the item is kept with its closest negative
    assert [(p.index, p.rejected) for p in pairs] == [
        (0, "rain later"),
        (1, "market prices fall sharply"),
    ]
    assert report.close == [1] and report.dropped == []
    assert calls.count(("q2", 0)) == 1 and calls.count(("q2", 1)) == 1


def test_filter_sees_case_and_punctuation():
    rouge = FormAwareRougeL()
    assert rouge("The Mayor Resigns", "the mayor resigns") == 0.0
    assert rouge("the mayor resigns", "the mayor resigns") == 1.0
    # LaMP's scoring (used for metrics) is blind to both: the reason for a separate filter
    assert RougeL()("The Mayor Resigns!", "the mayor resigns") == 1.0


def test_a_lowercase_users_items_are_kept_with_the_models_own_answer():
    outputs = ["city council approves new park", "storm closes schools on monday"]
    items = [HistoryItem(f"q{i}", o) for i, o in enumerate(outputs)]
    model_answer = {f"q{i}": o.title() + "." for i, o in enumerate(outputs)}

    pairs, report = build_pairs(items, lambda t, _a: model_answer[t], progress=False)
    assert [(p.chosen, p.rejected) for p in pairs] == [
        (o, model_answer[f"q{i}"]) for i, o in enumerate(outputs)
    ]
    assert report.dropped == [] and report.close == []


def test_a_prefix_users_items_are_kept_as_close_contrasts():
    items = [HistoryItem("q", "BREAKING: Storm closes schools on Monday")]
    pairs, report = build_pairs(
        items, lambda _t, _a: "Storm closes schools on Monday", progress=False
    )
    assert pairs[0].rejected == "Storm closes schools on Monday" and report.close == [0]


def test_given_negatives_are_trusted_unless_identical():
    items = [
        HistoryItem("q", "all lowercase", rejected="All Lowercase"),
        HistoryItem("r", "same", rejected="same"),
    ]
    pairs, report = build_pairs(items, None, progress=False)
    assert len(pairs) == 1 and report.given == 1 and report.dropped == [1]


def test_missing_negative_without_a_source_is_refused():
    with pytest.raises(HistoryError, match="no 'rejected'"):
        build_pairs([HistoryItem("q", "a")], None, progress=False)


def test_no_usable_pair_is_refused():
    with pytest.raises(NoUsableItems, match="none of the 1 history item.s. was usable"):
        build_pairs([HistoryItem("q", "a b c")], lambda _t, _a: "a b c", progress=False)


def test_others_negative_is_seeded_and_stable():
    others = [HistoryItem(f"i{k}", f"other output {k}") for k in range(10)]
    pick = others_negative(others, seed=3)
    assert pick("x", 0) == others_negative(others, seed=3)("x", 0)
    assert pick("x", 0) != pick("x", 1)
