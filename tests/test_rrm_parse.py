"""The RRM output parser: table-driven good / tolerated / bad outputs, and a round trip of format_verdict."""
import math

import numpy as np
import pytest

from edit_rlhf.rrm.format import format_verdict
from edit_rlhf.rrm.parse import parse_verdict

Q = ["Is the square red?", "Is the background unchanged?", "Is the image sharp and free of noise?"]
LIST = '[{"question": "Is the square red?", "score": 1}, {"question": "Is the background unchanged?", "score": 0}, ' \
       '{"question": "Is the image sharp and free of noise?", "score": 1}]'
CANON = f'source: white background; red square. edited: white background; blue square.\n{LIST}\n' \
        '{"average_score": 0.67}\n<score>6.5</score>'

# (name, text, expected score, expected checks) -- all must parse with ok=True
GOOD = [
    ("canonical", CANON, 6.5, [1, 0, 1]),
    ("no_think", f'{LIST}\n{{"average_score": 0.67}}\n<score>6.5</score>', 6.5, [1, 0, 1]),
    ("paper_backslash_close", f'{LIST}, {{"average_score": 0.67}} <score> 7 <\\score>', 7.0, [1, 0, 1]),
    ("one_line_paper_style", f'{LIST}, {{"average_score": 0.67}} <score>7</score>', 7.0, [1, 0, 1]),
    ("single_quotes", CANON.replace('"', "'"), 6.5, [1, 0, 1]),
    ("extra_whitespace", f'\n\n  {LIST.replace(", ", " ,  ")}\n\n {{ "average_score" :  0.67 }}  \n'
                         '<score>\n 6.5 \n</score>\n', 6.5, [1, 0, 1]),
    ("trailing_text", CANON + "\nThat is my final answer. Thanks!", 6.5, [1, 0, 1]),
    ("trailing_eos_marker", CANON + "<|im_end|>", 6.5, [1, 0, 1]),
    ("integer_score_ten", CANON.replace("6.5", "10"), 10.0, [1, 0, 1]),
    ("score_zero", CANON.replace("6.5", "0"), 0.0, [1, 0, 1]),
    ("score_with_two_decimals", CANON.replace("6.5", "7.25"), 7.25, [1, 0, 1]),
    ("score_leading_dot", CANON.replace("6.5", ".5"), 0.5, [1, 0, 1]),
    ("uppercase_tag", CANON.replace("<score>", "<SCORE>").replace("</score>", "</SCORE>"), 6.5, [1, 0, 1]),
    ("spaces_inside_tag", CANON.replace("<score>", "< score >").replace("</score>", "< /score >"), 6.5, [1, 0, 1]),
    ("quoted_score_value", CANON.replace("<score>6.5", '<score>"6.5"'), 6.5, [1, 0, 1]),
    ("string_check_values", CANON.replace('"score": 1', '"score": "1"'), 6.5, [1, 0, 1]),
    ("bool_check_values", CANON.replace('"score": 1', '"score": true').replace('"score": 0', '"score": false'),
     6.5, [1, 0, 1]),
    ("python_bools", CANON.replace('"', "'").replace("'score': 1", "'score': True").replace("'score': 0", "'score': False"),
     6.5, [1, 0, 1]),
    ("float_check_values", CANON.replace('"score": 1', '"score": 1.0'), 6.5, [1, 0, 1]),
    ("trailing_comma", CANON.replace('"score": 1}]', '"score": 1},]'), 6.5, [1, 0, 1]),
    ("no_average", f"{LIST}\n<score>6.5</score>", 6.5, [1, 0, 1]),
    ("objects_without_list", '{"question": "Is the square red?", "score": 1}\n{"question": "Is the background '
                             'unchanged?", "score": 0}\n{"question": "Is the image sharp and free of noise?", '
                             '"score": 1}\n{"average_score": 0.67}\n<score>6.5</score>', 6.5, [1, 0, 1]),
    ("bbox_list_in_think", "square at [10, 12, 30, 34], now [40, 12, 60, 34].\n" + CANON, 6.5, [1, 0, 1]),
    ("last_of_two_verdicts", CANON.replace("6.5", "3") + "\nOn reflection:\n" +
     CANON.replace('"score": 0}', '"score": 1}').replace("0.67", "1.00").replace("6.5", "9"), 9.0, [1, 1, 1]),
    ("truncated_repeat_after_score", CANON + "\n<score>", 6.5, [1, 0, 1]),
    ("apostrophe_in_question", CANON.replace("Is the square red?", "Is the dog's collar red?"), 6.5, [1, 0, 1]),
    ("question_with_brackets", CANON.replace("Is the square red?", "Is the square [top] red?"), 6.5, [1, 0, 1]),
    ("inconsistent_average_kept", CANON.replace("0.67", "0.20"), 6.5, [1, 0, 1]),
]

# (name, text, words expected in the reason) -- all must give ok=False with that reason
BAD = [
    ("empty", "", "empty"),
    ("whitespace_only", "  \n\t ", "empty"),
    ("not_text", None, "not text"),
    ("no_score_tag", f"{LIST}\n{{\"average_score\": 0.67}}\n", "no <score>"),
    ("truncated_in_think", "source: white background; red squ", "no <score>"),
    ("truncated_in_list", '[{"question": "Is the square red?", "score": 1}, {"question": "Is the', "no <score>"),
    ("truncated_in_score", f"{LIST}\n{{\"average_score\": 0.67}}\n<score>6", "not closed"),
    ("unclosed_score_then_text", f"{LIST}\n<score>7 and more words", "not closed"),
    ("score_not_number", CANON.replace("6.5", "high"), "not a number"),
    ("score_fraction", CANON.replace("6.5", "7/10"), "not a number"),
    ("score_empty", CANON.replace("6.5", ""), "not a number"),
    ("score_two_numbers", CANON.replace("6.5", "6.5 7"), "not a number"),
    ("score_above_range", CANON.replace("6.5", "12"), "outside"),
    ("score_negative", CANON.replace("6.5", "-1"), "outside"),
    ("score_nan", CANON.replace("6.5", "nan"), "not a number"),
    ("no_checks", "looks fine\n<score>8</score>", "no JSON list"),
    ("checks_not_closed", '[{"question": "Is the square red?", "score": 1}, {"question": "x", "score": 0 '
                          '<score>8</score>', "not closed"),
    ("checks_invalid_json", '[{"question": "Is the square red?" "score": 1}]\n<score>8</score>', "not valid JSON"),
    ("check_value_two", CANON.replace('"score": 0', '"score": 2'), "must be 0 or 1"),
    ("check_value_half", CANON.replace('"score": 0', '"score": 0.5'), "must be 0 or 1"),
    ("check_value_text", CANON.replace('"score": 0', '"score": "no"'), "must be 0 or 1"),
    ("check_missing_score", CANON.replace(', "score": 0}', "}"), "no 'score'"),
    ("check_not_object", '[{"question": "a", "score": 1}, 1]\n<score>8</score>', "not an object"),
    ("empty_checks_list", "[]\n<score>8</score>", "no JSON list"),
    ("wrong_check_count", CANON.replace(', {"question": "Is the background unchanged?", "score": 0}', ""),
     "expected 3 checks"),
    ("average_not_number", CANON.replace("0.67", "abc"), "average_score is not a number"),
    ("average_out_of_range", CANON.replace("0.67", "6.7"), "average_score"),
    ("tag_only_open_close_mismatch", "[{\"question\": \"a\", \"score\": 1}]<score>5</scor>", "not closed"),
    ("repeated_garbage", "<|image_pad|>" * 20, "no <score>"),
    ("random_tokens", "  the the the square red red average", "no <score>"),
]


@pytest.mark.parametrize("name,text,score,checks", GOOD, ids=[g[0] for g in GOOD])
def test_good_and_tolerated_outputs_parse(name, text, score, checks):
    v = parse_verdict(text, n_expected=3)
    assert v.ok, (name, v.reason)
    assert v.reason == "" and v.score == pytest.approx(score) and v.checks == checks
    assert v.average is not None and 0.0 <= v.average <= 1.0


@pytest.mark.parametrize("name,text,words", BAD, ids=[b[0] for b in BAD])
def test_bad_outputs_give_a_reason_never_an_exception(name, text, words):
    v = parse_verdict(text, n_expected=3)
    assert not v.ok and words in v.reason, (name, v.reason)


def test_table_has_at_least_30_cases():
    assert len(GOOD) + len(BAD) >= 30 and len(BAD) >= 20


def test_fields_of_a_canonical_verdict():
    v = parse_verdict(CANON, n_expected=3)
    assert v.questions == Q and v.average == 0.67 and v.average_given and v.average_consistent
    assert v.think.startswith("source: white background") and v.think.endswith("blue square.")
    assert parse_verdict(CANON.replace("0.67", "0.20")).average_consistent is False
    assert parse_verdict(f"{LIST}\n<score>6.5</score>").average == 0.67  # computed when absent


def test_score_only_mode_accepts_a_bare_score():
    v = parse_verdict("looks fine\n<score>8</score>", n_expected=3, require_checks=False)
    assert v.ok and v.score == 8.0 and v.checks == []
    assert not parse_verdict("looks fine", require_checks=False).ok


def test_round_trip_of_format_verdict():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 12))
        checks = [(f"Is point {i} ok? it's \"quoted\" [x] {{y}}", int(rng.integers(0, 2))) for i in range(n)]
        score = float(rng.uniform(0, 10))
        think = "" if trial % 3 == 0 else f"source: {trial}. edited: something <b>."
        text = format_verdict(checks, score, think)
        v = parse_verdict(text, n_expected=n)
        assert v.ok, (text, v.reason)
        assert v.checks == [c for _, c in checks] and v.questions == [q for q, _ in checks]
        assert v.score == pytest.approx(round(score, 1), abs=1e-9) and v.think == think.strip()
        assert v.average == pytest.approx(sum(c for _, c in checks) / n, abs=0.0051) and v.average_consistent


def test_never_raises_on_random_bytes():
    rng = np.random.default_rng(1)
    alphabet = list('[]{}"\':,<>/\\score average_score question 0123456789.\n')
    for _ in range(500):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 120))))
        v = parse_verdict(text, n_expected=int(rng.integers(1, 5)))
        assert v.ok or v.reason
        assert v.score is None or math.isfinite(v.score)
