"""
Config as plain Python (nanoGPT's configurator, as a function, with its known flaws fixed).

    python train.py config/tiny_rho1.py --max_iters=100 --out_dir=out-try

Arguments are applied in order, later ones win: a path ending in .py is exec'd in a fresh
namespace holding a copy of the config so far; --key=value is parsed with ast.literal_eval
(for a string key the text itself is the value). Every key must already have a
default, and every value must have the default's type: an int is accepted for a float, a
list for a tuple and vice versa, a bool is not a number, and a None default takes anything.
Any refusal is a ValueError that says which key, which types, and where the value came from.
"""
import ast
import copy
import difflib
import types


def _unknown(key, defaults, where):
    close = difflib.get_close_matches(key, list(defaults), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown config key {key!r} ({where}){hint}")


def _check(key, value, defaults, where):
    """Return value converted to the default's type, or raise saying what is wrong."""
    if key not in defaults:
        raise _unknown(key, defaults, where)
    default = defaults[key]
    if default is None:                      # None means "unset": anything goes
        return value
    want = type(default)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)  # bool is an int subclass
    elif want is float and isinstance(value, int):
        return float(value)                  # nanoGPT refused --learning_rate=1
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = want(value) if ok else value
    else:
        ok = isinstance(value, want)
    if not ok:
        raise ValueError(f"config key {key!r} ({where}) expects {want.__name__}, "
                         f"got {type(value).__name__} {value!r}")
    return value


def configure(defaults, argv, log=print):
    """Apply config files and --key=value overrides in argv to a copy of defaults."""
    cfg = copy.deepcopy(defaults)
    for arg in argv:
        if not arg.startswith("--"):
            if not arg.endswith(".py"):
                raise ValueError(f"{arg!r} is neither a config file (*.py) nor --key=value")
            try:
                with open(arg) as f:
                    source = f.read()
            except OSError as e:
                raise ValueError(f"cannot read config file {arg!r}: {e.strerror}") from None
            log(f"Overriding config with {arg}:\n{source}")
            namespace = copy.deepcopy(cfg)   # the file may read earlier keys, not mutate them
            exec(compile(source, arg, "exec"), namespace)
            for key, value in namespace.items():
                if key.startswith("_") or isinstance(value, types.ModuleType) or callable(value):
                    continue                 # __builtins__, _helpers, imports, functions, classes
                cfg[key] = _check(key, value, defaults, f"in {arg}")
            continue
        if "=" not in arg:
            raise ValueError(f"{arg!r}: give flags a value, e.g. {arg}=True")
        key, text = arg[2:].split("=", 1)    # --a=b=c sets a to 'b=c'
        if key not in defaults:
            raise _unknown(key, defaults, "on the command line")
        try:
            value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            default = defaults[key]
            if not isinstance(default, str):  # bare words only where a str is expected
                want = "a Python literal" if default is None else type(default).__name__
                raise ValueError(f"config key {key!r} (on the command line) expects {want}, "
                                 f"got {text!r}, which is not a Python literal") from None
            value = text
        if isinstance(defaults[key], str) and not isinstance(value, str):
            value = text                     # --wandb_run_name=2024 means the string '2024'
        cfg[key] = _check(key, value, defaults, "on the command line")
        log(f"Overriding: {key} = {cfg[key]!r}")
    return cfg


def format_config(cfg):
    """One sorted key = value per line, for the run's log."""
    return "\n".join(f"{k} = {cfg[k]!r}" for k in sorted(cfg))
