"""The CLI takes `key=value` overrides wherever the documented command lines put them."""
import pytest

from edit_rlhf.cli import parse_command_line


@pytest.mark.parametrize("cmd", [["sandbox", "vision"], ["sandbox", "perception"]])
def test_overrides_after_config_reach_a_command_with_a_positional(cmd):
    a = parse_command_line(cmd + ["out", "--config", "c.yaml", "steps=3", "init=models/x"])
    assert (a.out, a.config, a.overrides) == ("out", "c.yaml", ["steps=3", "init=models/x"])
    b = parse_command_line(cmd + ["out", "steps=2", "--config", "c.yaml", "lr=1"])
    assert b.overrides == ["steps=2", "lr=1"]


def test_overrides_of_a_pipeline_are_unchanged():
    a = parse_command_line(["grpo", "--config", "c.yaml", "algo.group_size=8"])
    assert a.overrides == ["algo.group_size=8"]


@pytest.mark.parametrize("argv", [["sandbox", "vision", "out", "--config", "c.yaml", "--bogus"],
                                  ["sandbox", "vision", "out", "--config", "c.yaml", "stray"]])
def test_unknown_arguments_are_still_refused(argv, capsys):
    with pytest.raises(SystemExit):
        parse_command_line(argv)
    assert "unrecognized arguments" in capsys.readouterr().err
