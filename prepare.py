"""
Prepare a dataset once (data.py holds the format, the writer and the loader; sources.py
the real sources), then train from its memmaps:

    python prepare.py                     # tinycode with the byte tokenizer
    python prepare.py --tokenizer=cl100k_base --data_dir=data_cache/tinycode-cl100k
    python prepare.py --noise=0.3 --data_dir=data_cache/tinycode-noise   # the oracle's data
    python prepare.py --dataset=gsm8k,mbpp --path=../shared/data/gsm8k,../shared/data/mbpp/mbpp.jsonl \
        --data_dir=data_cache/real        # real sources (sources.py); an empty --path: the hub
    python prepare.py --cache_tokenizer=cl100k_base --cache_files=PATH   # tiktoken files, offline

Every flag is a key of `defaults` below (configurator.py: --key=value, or a config .py).
"""
import sys

import configurator
import data
import sources

defaults = dict(
    dataset="tinycode",             # 'tinycode', or real sources, comma-separated: sources.SOURCES
    data_dir="data_cache/tinycode",  # where the prepared splits go
    tokenizer="bytes",              # 'bytes', a tiktoken name, or a path: see tokenization.py
    n_train=3000, n_val=200, n_test=200,  # problems per split
    n_incorrect=2,                  # mutated (labelled) variants per problem
    families=data.TINYCODE_FAMILIES,  # tinycode families, comma-separated, or 'all'
    max_const=data.TINYCODE_MAX_CONST,  # largest integer constant (0: the templates' own ranges)
    n_pretrain=data.TINYCODE_PRETRAIN,  # problems in the base model's 'pretrain' split; 0 = none
    noise=0.0,                      # share of train's correct solutions with a corrupted constant (tinycode.corrupt)
    pretrain_families=",".join(data.TINYCODE_PRETRAIN_FAMILIES),
    seed=0,
    cache_tokenizer="",             # set to a tiktoken name to cache local BPE files ...
    cache_files="",                 # ... given here, comma-separated, then exit
    # real sources (sources.py); lists are comma-separated, one entry per source
    path="",                        # local files in the hub's schema; an empty entry: the hub
    mix="",                         # proportions of samples per source, e.g. '0.7,0.3'; '' = all of each
    n_samples=0,                    # train samples in all (seeded subsample); 0 = all the mix allows
    block_size=2048,                # longer samples are dropped (and counted)
    val_frac=0.02,                  # share of problems held out as the val split
    decontam="humaneval,mbpp,gsm8k,math,code_contests",  # eval sets, NAME or NAME=PATH; 'none'
    languages="3",                  # code_contests languages: 3 Python 3, 1 Python 2
    max_correct=10, max_incorrect=10,  # code_contests solutions per problem and label; 0 = all
    prompt_tests=False,             # code_contests: append the public tests to the prompt
    threads=8,                      # tokenizer threads (tiktoken's batch encoding)
)


def prepare_real(cfg):
    """The real sources named in cfg['dataset'] -> data_dir/{train,val} (sources.prepare)."""
    names = cfg["dataset"].split(",")
    paths = cfg["path"].split(",") if cfg["path"] else [""] * len(names)
    if len(paths) != len(names):
        raise ValueError(f"--path has {len(paths)} entries for {len(names)} datasets {names}; "
                         f"give one per dataset (empty for the hub)")
    cc = {"languages": tuple(int(x) for x in cfg["languages"].split(",")), "prompt_tests": cfg["prompt_tests"],
          "max_correct": cfg["max_correct"], "max_incorrect": cfg["max_incorrect"]}
    specs = [(n, p or None, cc if n == "code_contests" else {}) for n, p in zip(names, paths)]
    mix = [float(x) for x in cfg["mix"].split(",")] if cfg["mix"] else None
    return sources.prepare(cfg["data_dir"], specs, cfg["tokenizer"], cfg["block_size"],
                           cfg["n_samples"], mix, cfg["val_frac"], cfg["seed"], cfg["decontam"],
                           cfg["threads"])


def main(argv):
    cfg = configurator.configure(defaults, argv)
    if cfg["cache_tokenizer"]:
        where = data.cache_tokenizer_files(cfg["cache_tokenizer"], cfg["cache_files"].split(","))
        print(f"cached {cfg['cache_tokenizer']} in {where}; set TIKTOKEN_CACHE_DIR={where} if that is not the default")
        return
    if cfg["dataset"] != "tinycode":
        prepare_real(cfg)
        return
    data.prepare_tinycode(cfg["data_dir"], cfg["tokenizer"], cfg["n_train"], cfg["n_val"],
                          cfg["n_test"], cfg["n_incorrect"], cfg["seed"], families=cfg["families"],
                          max_const=cfg["max_const"], n_pretrain=cfg["n_pretrain"],
                          pretrain_families=cfg["pretrain_families"], noise=cfg["noise"])


if __name__ == "__main__":
    main(sys.argv[1:])
