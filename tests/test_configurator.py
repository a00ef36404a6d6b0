"""
configurator.configure: config files and --key=value overrides, type checks, error messages.

    python -m pytest tests/test_configurator.py -q
"""
import pytest

from configurator import configure, format_config

DEFAULTS = {"out_dir": "out", "max_iters": 100, "learning_rate": 1e-3, "compile": False,
            "betas": [0.9, 0.95], "shape": (1, 2), "resume_from": None}


def quiet(*args):
    pass


def write(tmp_path, source, name="cfg.py"):
    path = tmp_path / name
    path.write_text(source)
    return str(path)


def test_no_args_is_a_copy_of_defaults():
    cfg = configure(DEFAULTS, [], log=quiet)
    assert cfg == DEFAULTS and cfg is not DEFAULTS


def test_config_file_applied_and_may_read_earlier_keys(tmp_path):
    path = write(tmp_path, "import math\n_n = 4\nmax_iters = _n * max_iters\nout_dir = 'out-file'\n")
    cfg = configure(DEFAULTS, [path], log=quiet)
    assert cfg["max_iters"] == 400 and cfg["out_dir"] == "out-file"
    assert "_n" not in cfg and "math" not in cfg


def test_override_wins_over_file(tmp_path):
    path = write(tmp_path, "max_iters = 7\n")
    assert configure(DEFAULTS, [path, "--max_iters=9"], log=quiet)["max_iters"] == 9


def test_order_respected(tmp_path):
    path = write(tmp_path, "max_iters = 7\n")
    assert configure(DEFAULTS, ["--max_iters=9", path], log=quiet)["max_iters"] == 7
    assert configure(DEFAULTS, ["--max_iters=1", "--max_iters=2"], log=quiet)["max_iters"] == 2


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path, "max_iter = 5\n")
    with pytest.raises(ValueError, match=r"'max_iter'.*cfg\.py.*did you mean max_iters"):
        configure(DEFAULTS, [path], log=quiet)


def test_unknown_key_on_command_line():
    with pytest.raises(ValueError, match=r"'learning_rat'.*command line.*did you mean learning_rate"):
        configure(DEFAULTS, ["--learning_rat=0.1"], log=quiet)
    with pytest.raises(ValueError, match="'learning_rat'"):   # unknown even when unparsable
        configure(DEFAULTS, ["--learning_rat=abc"], log=quiet)


def test_type_mismatch_names_key_and_types(tmp_path):
    with pytest.raises(ValueError, match=r"'max_iters'.*command line.*expects int, got float 1\.5"):
        configure(DEFAULTS, ["--max_iters=1.5"], log=quiet)
    path = write(tmp_path, "out_dir = 3\n")
    with pytest.raises(ValueError, match=r"'out_dir'.*cfg\.py.*expects str, got int 3"):
        configure(DEFAULTS, [path], log=quiet)


def test_int_accepted_for_float_key(tmp_path):
    cfg = configure(DEFAULTS, ["--learning_rate=1"], log=quiet)
    assert cfg["learning_rate"] == 1.0 and type(cfg["learning_rate"]) is float
    cfg = configure(DEFAULTS, [write(tmp_path, "learning_rate = 2\n")], log=quiet)
    assert type(cfg["learning_rate"]) is float


def test_bool_and_numbers_do_not_mix():
    with pytest.raises(ValueError, match=r"'max_iters'.*expects int, got bool True"):
        configure(DEFAULTS, ["--max_iters=True"], log=quiet)
    with pytest.raises(ValueError, match=r"'learning_rate'.*expects float, got bool"):
        configure(DEFAULTS, ["--learning_rate=False"], log=quiet)
    with pytest.raises(ValueError, match=r"'compile'.*expects bool, got int 1"):
        configure(DEFAULTS, ["--compile=1"], log=quiet)
    assert configure(DEFAULTS, ["--compile=True"], log=quiet)["compile"] is True


def test_string_fallback_only_for_str_keys():
    assert configure(DEFAULTS, ["--out_dir=out-tiny"], log=quiet)["out_dir"] == "out-tiny"
    with pytest.raises(ValueError, match=r"'max_iters'.*expects int.*'abc'"):
        configure(DEFAULTS, ["--max_iters=abc"], log=quiet)
    with pytest.raises(ValueError, match=r"'resume_from'.*'ckpt/x'"):   # None default: a literal
        configure(DEFAULTS, ["--resume_from=ckpt/x"], log=quiet)


def test_none_default_takes_anything():
    assert configure(DEFAULTS, ["--resume_from='ckpt'"], log=quiet)["resume_from"] == "ckpt"
    assert configure(DEFAULTS, ["--resume_from=3"], log=quiet)["resume_from"] == 3


def test_value_may_contain_equals():
    assert configure(DEFAULTS, ["--out_dir=b=c"], log=quiet)["out_dir"] == "b=c"


def test_list_and_tuple_keys():
    cfg = configure(DEFAULTS, ["--betas=(0.8, 0.99)", "--shape=[3, 4]"], log=quiet)
    assert cfg["betas"] == [0.8, 0.99] and cfg["shape"] == (3, 4)
    with pytest.raises(ValueError, match=r"'betas'.*expects list, got float"):
        configure(DEFAULTS, ["--betas=0.9"], log=quiet)


def test_defaults_not_mutated(tmp_path):
    before = {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULTS.items()}
    path = write(tmp_path, "betas.append(0.5)\nmax_iters = 1\n")   # in-place edit of a list
    cfg = configure(DEFAULTS, [path, "--out_dir=x"], log=quiet)
    assert DEFAULTS == before
    assert cfg["betas"] == [0.9, 0.95, 0.5]


def test_bare_flag_is_an_error():
    with pytest.raises(ValueError, match=r"--compile=True"):
        configure(DEFAULTS, ["--compile"], log=quiet)


def test_config_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read config file .*nope\.py"):
        configure(DEFAULTS, [str(tmp_path / "nope.py")], log=quiet)
    with pytest.raises(ValueError, match=r"neither a config file"):
        configure(DEFAULTS, ["config.txt"], log=quiet)


def test_log_lines(tmp_path):
    lines = []
    path = write(tmp_path, "max_iters = 7\n")
    configure(DEFAULTS, [path, "--betas=(0.8, 0.9)"], log=lines.append)
    assert lines[0].startswith(f"Overriding config with {path}:") and "max_iters = 7" in lines[0]
    assert lines[1] == "Overriding: betas = [0.8, 0.9]"


def test_format_config_sorted_one_per_line():
    text = format_config({"b": 2, "a": "x"})
    assert text == "a = 'x'\nb = 2"


def test_string_key_takes_the_text_even_when_it_parses():
    cfg = configure({"wandb_run_name": "", "n": 1}, ["--wandb_run_name=2024"], log=quiet)
    assert cfg["wandb_run_name"] == "2024"
