"""
Sample from a trained checkpoint, and the `generate` callable eval.py scores.

    python sample.py --out_dir=out/tiny_baseline
    python sample.py --out_dir=out/tiny_baseline --start="# Return x plus 3.\ndef f(x):\n"
    python sample.py --out_dir=out/tiny_baseline --bench=True   # speculative vs plain greedy

Generation runs from head 1 with a KV cache (model.generate); at temperature 0 the MTP
heads can draft and head 1 verify (model.generate_speculative), which gives the same
tokens as plain greedy decoding, faster when the heads guess well.
"""
import os
import sys
import time
import zlib

import torch

import configurator
import data
import pretrained
from model import ModelConfig, Transformer


# a pretrained model's KV cache is preallocated to max_seq_len (model.new_caches): its own
# context (32K for Qwen2.5) would cost GBs a sampled row. 2048 holds any HumanEval / MBPP
# prompt with 512 new tokens, and is the block_size experiment.py's real settings train
# with, so a base model is evaluated with the room its fine-tuned runs have.
PRETRAINED_MAX_SEQ_LEN = 2048


def load_model(path, device="cpu"):
    """A run dir, checkpoint file or pretrained model (an HF dir, a .gguf: pretrained.py) ->
    (model in eval mode, its tokenizer, the checkpoint). The tokenizer is rebuilt from the
    run's config and checked against the identity saved with the weights; a pretrained model
    comes with its own tokenizer and a stand-in checkpoint holding the keys eval.py and
    selflabel.py read, so the base model of an experiment is scored exactly as its runs."""
    import train
    if pretrained.is_pretrained_source(path):
        tok = pretrained.tokenizer_source(path)
        if tok is None:
            raise ValueError(f"{path}: no tokenizer beside the pretrained model (tokenizer.json, "
                             f"tokenizer.model, or a .gguf header)")
        model, model_args, info = pretrained.load_pretrained(path, device=device,
                                                             max_seq_len=PRETRAINED_MAX_SEQ_LEN)
        enc = data.get_tokenizer(tok)
        ckpt = {"model_args": model_args, "iter_num": 0, "model_source": info,
                "config": {"tokenizer": tok, "weighting": "pretrained", "seed": 0, "data_dir": ""}}
        return model, enc, ckpt
    ckpt = train.load_checkpoint(path, map_location=device)
    model = Transformer(ModelConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    enc = data.get_tokenizer(ckpt["config"]["tokenizer"])
    data.check_tokenizer(ckpt["tokenizer"], data.tokenizer_identity(enc), f"checkpoint {path}")
    return model, enc, ckpt


def make_generate(model, enc, seed=0, speculative=True):
    """generate(prompts, *, n, temperature, top_p, max_new_tokens, stop) -> n completions per
    prompt (text after the prompt, cut at the first stop string), as eval.evaluate_task
    expects. Each prompt's sampling is seeded by (seed, prompt), so a resumed evaluation
    draws what an uninterrupted one would."""
    eot = data.eot_token(enc)

    def generate(prompts, *, n, temperature, top_p, max_new_tokens, stop):
        longest = max(map(len, stop), default=0)

        def stopped(row):   # only the tail can hold a stop string that just appeared
            return any(s in enc.decode(row[-(longest + 8):]) for s in stop)

        out = []
        for prompt in prompts:
            ids = enc.encode_ordinary(prompt)
            if temperature == 0:   # greedy: one decode serves all n samples
                if speculative and model.config.n_future > 1:
                    rows = [model.generate_speculative(ids, max_new_tokens, eos_id=eot, stop=stopped,
                                                       n_vocab=enc.n_vocab)[0]] * n
                else:
                    rows = model.generate_rows(ids, max_new_tokens, eos_id=eot, stop=stopped,
                                               n_vocab=enc.n_vocab) * n
            else:
                g = torch.Generator(device=model.tok_embeddings.weight.device)
                g.manual_seed(seed * 1_000_003 + zlib.crc32(prompt.encode()))
                # model.generate's tokens, without a host sync per token
                rows = model.generate_rows(ids, max_new_tokens, n=n, temperature=temperature,
                                           top_p=top_p, eos_id=eot, stop=stopped, generator=g,
                                           n_vocab=enc.n_vocab)
            out.append([cut(enc.decode(r), stop) for r in rows])
        return out

    return generate


def cut(text, stop):
    """text up to the first occurrence of any stop string."""
    end = min([text.find(s) for s in stop if s in text], default=len(text))
    return text[:end]


def bench_speculative(model, enc, prompts, max_new_tokens):
    """Plain greedy vs self-speculative decoding on the same prompts: tokens/s of each,
    acceptance rate of each head's drafts, and a check that the outputs are identical."""
    eot = data.eot_token(enc)
    ids = [enc.encode_ordinary(p) for p in prompts]
    t0 = time.time()
    plain = [model.generate(x, max_new_tokens, eos_id=eot, n_vocab=enc.n_vocab)[0] for x in ids]
    t_plain = time.time() - t0
    t0 = time.time()
    spec = [model.generate_speculative(x, max_new_tokens, eos_id=eot, n_vocab=enc.n_vocab) for x in ids]
    t_spec = time.time() - t0
    n_tok = sum(map(len, plain))
    rates = [[r[1][k] for r in spec if r[1][k] is not None] for k in range(model.config.n_future)]
    return {"identical": all(a == b for a, (b, _) in zip(plain, spec)), "tokens": n_tok,
            "plain_tok_s": n_tok / t_plain, "spec_tok_s": n_tok / t_spec,
            "speedup": t_plain / t_spec,
            "acceptance": [sum(r) / len(r) if r else None for r in rates]}


defaults = dict(
    out_dir="out/tiny_baseline",   # the run whose ckpt.pt to load
    start="",                      # prompt; empty: the first problems of the test split
    num_samples=3,
    max_new_tokens=96,
    temperature=0.8,
    top_p=0.95,
    seed=0,
    device="cpu",
    bench=False,                   # measure speculative vs plain greedy decoding instead
)

if __name__ == "__main__":
    cfg = configurator.configure(defaults, sys.argv[1:])
    model, enc, ckpt = load_model(cfg["out_dir"], cfg["device"])
    if cfg["start"]:
        prompts = [cfg["start"].encode().decode("unicode_escape")]
    else:
        problems = data.PreparedSplit(os.path.join(ckpt["config"]["data_dir"], "test")).problems()
        prompts = [p["prompt"] for p in problems[:50 if cfg["bench"] else 3]]
    if cfg["bench"]:
        r = bench_speculative(model, enc, prompts, cfg["max_new_tokens"])
        print(f"{len(prompts)} prompts, {r['tokens']} tokens, outputs identical: {r['identical']}")
        print(f"plain greedy {r['plain_tok_s']:.0f} tok/s, speculative {r['spec_tok_s']:.0f} tok/s, "
              f"speed-up {r['speedup']:.2f}x")
        print("draft acceptance per head: " + ", ".join(
            f"head {k + 1}: {a:.2f}" for k, a in enumerate(r["acceptance"]) if a is not None))
        sys.exit(0)
    gen = make_generate(model, enc, seed=cfg["seed"])
    for p in prompts:
        outs = gen([p], n=cfg["num_samples"], temperature=cfg["temperature"], top_p=cfg["top_p"],
                   max_new_tokens=cfg["max_new_tokens"], stop=["\n#", "\ndef "])
        for o in outs[0]:
            print(p + o)
            print("-" * 40)
