"""
Sample from a trained checkpoint, and the `generate` callable eval.py scores.

    python sample.py --out_dir=out/tiny_baseline
    python sample.py --out_dir=out/tiny_baseline --start="# Return x plus 3.\ndef f(x):\n"
    python sample.py --out_dir=out/tiny_baseline --bench=True   # greedy: one at a time, batched, speculative

Generation runs from head 1 with a KV cache, many prompts and samples decoded together
(model.generate_batch; model.generate is the readable one-prompt reference); at
temperature 0 the MTP heads can instead draft and head 1 verify
(model.generate_speculative), which gives the same tokens as plain greedy decoding,
faster for one prompt at a time when the heads guess well.
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
    import checkpoint
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
    # memory-mapped: the AdamW state a run's checkpoint also holds (2x the weights) is never read
    ckpt = checkpoint.load_checkpoint(path, map_location=device, mmap=True)
    model = Transformer(ModelConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    enc = data.get_tokenizer(ckpt["config"]["tokenizer"])
    data.check_tokenizer(ckpt["tokenizer"], data.tokenizer_identity(enc), f"checkpoint {path}")
    return model, enc, ckpt


def default_max_rows(model):
    """Rows decoded together by default: a GPU's throughput grows with the batch, a CPU's
    barely (measured: docs/scale.md)."""
    return 256 if model.tok_embeddings.weight.device.type == "cuda" else 32


def make_generate(model, enc, seed=0, speculative=False, max_rows=None):
    """generate(prompts, *, n, temperature, top_p, max_new_tokens, stop) -> n completions per
    prompt (text after the prompt, cut at the first stop string), as eval.evaluate_task
    expects. Prompts are decoded together (model.generate_batch), up to max_rows rows
    (prompts x samples) at a time, sorted by length so little is padding; a prompt with
    more than max_rows samples is decoded in slices. Each prompt's draws come from a
    generator seeded by (seed, prompt), one row of uniforms per sample, so a resumed or
    differently batched evaluation draws what an uninterrupted one would. Greedy decodes a
    prompt once for all n samples; speculative=True decodes greedy prompts max_rows at a
    time with the MTP heads drafting (model.generate_speculative_batch: the same tokens)."""
    eot = data.eot_token(enc)
    max_rows = max_rows or default_max_rows(model)

    def generate(prompts, *, n, temperature, top_p, max_new_tokens, stop):
        longest = max(map(len, stop), default=0)

        def stopped(row):   # only the tail can hold a stop string that just appeared
            return any(s in enc.decode(row[-(longest + 8):]) for s in stop)

        ids = [enc.encode_ordinary(p) for p in prompts]
        greedy = temperature == 0
        rows = {i: [] for i in range(len(prompts))}
        if greedy and speculative and model.config.n_future > 1:
            order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
            for s in range(0, len(order), max_rows):
                group = order[s:s + max_rows]
                got, _ = model.generate_speculative_batch([ids[i] for i in group], max_new_tokens,
                                                          eos_id=eot, stop=stopped, n_vocab=enc.n_vocab)
                for i, r in zip(group, got):
                    rows[i] = [r]
        else:
            per = 1 if greedy else n                 # rows decoded per prompt
            uniforms = {}
            if not greedy:
                for i, p in enumerate(prompts):
                    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(p.encode()))
                    uniforms[i] = torch.rand(n, max_new_tokens, generator=g)    # (n, new)
            order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
            if per > max_rows:   # (prompts, first sample, end sample) per batch
                batches = [([i], j, min(per, j + max_rows)) for i in order for j in range(0, per, max_rows)]
            else:
                size = max_rows // per
                batches = [(order[s:s + size], 0, per) for s in range(0, len(order), size)]
            for group, j0, j1 in batches:
                u = None if greedy else torch.cat([uniforms[i][j0:j1] for i in group])
                got = model.generate_batch([ids[i] for i in group], max_new_tokens, n=j1 - j0,
                                           temperature=temperature, top_p=top_p, eos_id=eot,
                                           stop=stopped, uniforms=u, n_vocab=enc.n_vocab)
                for i, r in zip(group, got):
                    rows[i].extend(r)
        return [[cut(enc.decode(r), stop) for r in rows[i] * (n if greedy else 1)]
                for i in range(len(prompts))]

    return generate


def cut(text, stop):
    """text up to the first occurrence of any stop string."""
    end = min([text.find(s) for s in stop if s in text], default=len(text))
    return text[:end]


def bench_decoding(model, enc, prompts, max_new_tokens, max_rows=32, compile=False):
    """Greedy decoding three ways on the same prompts, timed: one prompt at a time
    (generate_batch of one row), all prompts batched (generate_batch, max_rows rows at a
    time), and self-speculative one at a time (when the model has heads to draft with);
    with compile, batched again through the compiled decode step. Returns tokens/s of each, the drafts' acceptance per head, and whether the outputs are
    identical to one-at-a-time greedy's."""
    eot = data.eot_token(enc)
    ids = [enc.encode_ordinary(p) for p in prompts]
    kw = dict(eos_id=eot, n_vocab=enc.n_vocab)
    t0 = time.time()
    plain = [model.generate_batch([x], max_new_tokens, **kw)[0][0] for x in ids]
    t_plain = time.time() - t0
    t0 = time.time()
    batched = [r for s in range(0, len(ids), max_rows)
               for (r,) in model.generate_batch(ids[s:s + max_rows], max_new_tokens, **kw)]
    t_batched = time.time() - t0
    n_tok = sum(map(len, plain))
    out = {"prompts": len(ids), "tokens": n_tok, "plain_tok_s": n_tok / t_plain,
           "batched_tok_s": n_tok / t_batched, "batched_identical": batched == plain,
           "batched_rows": min(max_rows, len(ids))}
    if compile:   # the same batches through torch.compile(decode_step), after one to compile
        model.compile_decode()
        t0 = time.time()
        model.generate_batch(ids[:max_rows], max_new_tokens, **kw)
        out["compile_s"] = time.time() - t0
        t0 = time.time()
        compiled = [r for s in range(0, len(ids), max_rows)
                    for (r,) in model.generate_batch(ids[s:s + max_rows], max_new_tokens, **kw)]
        out.update(compiled_tok_s=n_tok / (time.time() - t0), compiled_identical=compiled == plain)
        del model.compiled_decode
    if model.config.n_future > 1:
        t0 = time.time()
        spec = [model.generate_speculative(x, max_new_tokens, **kw) for x in ids]
        t_spec = time.time() - t0
        rates = [[r[1][k] for r in spec if r[1][k] is not None] for k in range(model.config.n_future)]
        out.update(spec_tok_s=n_tok / t_spec, spec_identical=[r for r, _ in spec] == plain,
                   acceptance=[sum(r) / len(r) if r else None for r in rates])
        t0 = time.time()   # speculative, max_rows prompts at a time
        spec_b, rates_b = [], []
        for s in range(0, len(ids), max_rows):
            got, rates_s = model.generate_speculative_batch(ids[s:s + max_rows], max_new_tokens, **kw)
            spec_b += got
            rates_b.append(rates_s)
        out.update(spec_batched_tok_s=n_tok / (time.time() - t0), spec_batched_identical=spec_b == plain,
                   acceptance_batched=[None if None in r else sum(r) / len(r) for r in zip(*rates_b)])   # mean over batches
    return out


defaults = dict(
    out_dir="out/tiny_baseline",   # the run whose ckpt.pt to load
    start="",                      # prompt; empty: the first problems of the test split
    task="",                       # or the prompts of an eval.py task (e.g. humaneval)
    num_samples=3,
    max_new_tokens=96,
    temperature=0.8,
    top_p=0.95,
    seed=0,
    device="cpu",
    max_rows=32,                   # rows (prompts x samples) decoded together
    bench=False,                   # measure greedy decoding: one at a time, batched, speculative
    compile=False,                 # decode through torch.compile(model.decode_step) (gpt-fast style)
)

if __name__ == "__main__":
    cfg = configurator.configure(defaults, sys.argv[1:])
    model, enc, ckpt = load_model(cfg["out_dir"], cfg["device"])
    if cfg["start"]:
        prompts = [cfg["start"].encode().decode("unicode_escape")]
    elif cfg["task"]:
        import tasks
        prompts = [p["prompt"] for p in tasks.load_task(cfg["task"], limit=50 if cfg["bench"] else 3)]
    else:
        problems = data.PreparedSplit(os.path.join(ckpt["config"]["data_dir"], "test")).problems()
        prompts = [p["prompt"] for p in problems[:50 if cfg["bench"] else 3]]
    if cfg["bench"]:
        r = bench_decoding(model, enc, prompts, cfg["max_new_tokens"], cfg["max_rows"], cfg["compile"])
        print(f"{r['prompts']} prompts, {r['tokens']} tokens, greedy: one prompt at a time "
              f"{r['plain_tok_s']:.0f} tok/s, {r['batched_rows']} rows batched "
              f"{r['batched_tok_s']:.0f} tok/s (identical: {r['batched_identical']})")
        if "compiled_tok_s" in r:
            print(f"batched with the compiled decode step {r['compiled_tok_s']:.0f} tok/s (identical: "
                  f"{r['compiled_identical']}; compiling and the first batch took {r['compile_s']:.0f} s)")
        if "spec_tok_s" in r:
            print(f"speculative {r['spec_tok_s']:.0f} tok/s (identical: {r['spec_identical']}), "
                  "draft acceptance per head: " + ", ".join(
                      f"head {k + 1}: {a:.2f}" for k, a in enumerate(r["acceptance"]) if a is not None))
            print(f"speculative, {r['batched_rows']} rows batched {r['spec_batched_tok_s']:.0f} tok/s "
                  f"(identical: {r['spec_batched_identical']}; "
                  f"{r['spec_batched_tok_s'] / r['batched_tok_s']:.2f}x batched greedy)")
        sys.exit(0)
    if cfg["compile"]:
        model.compile_decode()
    gen = make_generate(model, enc, seed=cfg["seed"], max_rows=cfg["max_rows"])
    for p in prompts:
        outs = gen([p], n=cfg["num_samples"], temperature=cfg["temperature"], top_p=cfg["top_p"],
                   max_new_tokens=cfg["max_new_tokens"], stop=["\n#", "\ndef "])
        for o in outs[0]:
            print(p + o)
            print("-" * 40)
