"""
Config as plain Python (nanoGPT's configurator, as a function, with its known flaws fixed).

    python train.py config/tiny_rho1.py --max_iters=100 --out_dir=out-try

Arguments are applied in order, later ones win: a path ending in .py is exec'd with the
current config as its namespace; --key=value is parsed with ast.literal_eval. Every key
must already have a default, and every value must have the default's type (an int is
accepted for a float; a bool is not a number). Any refusal is a ValueError that says
which key, which types, and where the value came from.
"""
import ast
import difflib
import types


def _suggest(key, known):
    close = difflib.get_close_matches(key, known, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _check(key, value, defaults, where):
    """Return value converted to the default's type, or raise saying what is wrong."""
    if key not in defaults:
        raise ValueError(f"unknown config key {key!r} ({where}){_suggest(key, list(defaults))}")
    default = defaults[key]
    if default is None or value is None:
        return value
    want = type(default)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)   # bool is an int subclass
    elif want is float and isinstance(value, int):
        return float(value)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = want(value) if ok else value
    else:
        ok = isinstance(value, want)
    if not ok:
        raise ValueError(f"config key {key!r} ({where}) expects {want.__name__}, got "
                         f"{type(value).__name__} {value!r}")
    return value


def configure(defaults, argv, log=print):
    """Apply config files and --key=value overrides in argv to a copy of defaults."""
    cfg = dict(defaults)
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
            namespace = dict(cfg)
            exec(compile(source, arg, "exec"), namespace)
            for key, value in namespace.items():
                if key.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
                    continue
                if key not in cfg or value is not cfg[key]:
                    cfg[key] = _check(key, value, defaults, f"in {arg}")
        else:
            if "=" not in arg:
                raise ValueError(f"{arg!r}: write flags with a value, e.g. {arg}=True")
            key, text = arg[2:].split("=", 1)
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                # bare words are strings only where a string is expected (--out_dir=out-x)
                if key in defaults and isinstance(defaults[key], str):
                    value = text
                else:
                    _check(key, None, defaults, "on the command line")  # unknown key first
                    raise ValueError(f"config key {key!r} (on the command line): cannot parse "
                                     f"{text!r} as a {type(defaults[key]).__name__}") from None
            cfg[key] = _check(key, value, defaults, "on the command line")
            log(f"Overriding: {key} = {cfg[key]!r}")
    return cfg


def format_config(cfg):
    """One sorted key = value per line, for the run's log."""
    return "\n".join(f"{k} = {cfg[k]!r}" for k in sorted(cfg))
