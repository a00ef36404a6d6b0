"""
What a run reports about its weights.

WeightLog: per-log statistics of the weights (mean, spread, entropy over the heads, each
head's share of the mass, and, where the batch has a reference CE, the weights' Spearman
correlation with it), per-head histograms, and a sample of weight values, which the
'random_matched' control of this run draws from.
"""
import os

import numpy as np
import torch

import weights


class WeightLog:
    """Weight diagnostics: per-log statistics, per-head histograms and a sample of weight
    values (what the 'random_matched' control of this run draws from). The histogram's
    last bin, from 7.875, also holds every larger weight ('tokens' gives some), so that it
    counts every term."""
    BINS = np.linspace(0, 8, 65)

    def __init__(self, n_future, seed, cap=200_000):
        self.hist = np.zeros((n_future, len(self.BINS) - 1), dtype=np.int64)
        self.sample, self.cap = [], cap
        self.rng = np.random.default_rng(seed)

    def record(self, step, ref_ce=None):
        """Statistics of a step's weights over their valid terms: step is its micro-batches'
        (w (B, T, H), valid (B, T, H)) pairs, each with its own T. ref_ce, optional: each
        micro-batch's reference CE (the batch's 'ref_ce': (B, T) per token, or (B, T, H) with
        rho1_ref='matched'); given, the row has w_ref_spearman too, the rank correlation of
        the weights with the reference CE of the same terms (Experiment 4)."""
        v = torch.cat([w[valid] for w, valid in step])
        if v.numel() == 0:
            return {}
        ent, mass = [], 0.0
        for w, valid in step:
            wn = w / w.sum(-1, keepdim=True).clamp(min=1e-12)            # share per head at t
            multi = valid.sum(-1) > 1
            ent.append(-(wn * wn.clamp(min=1e-12).log()).sum(-1)[multi])  # entropy over heads
            mass = mass + w.sum(dim=(0, 1))
            for k in range(w.shape[-1]):
                x = w[..., k][valid[..., k]].float().cpu().numpy()
                self.hist[k] += np.histogram(np.minimum(x, self.BINS[-1]), self.BINS)[0]
        ent = torch.cat(ent)
        if sum(len(s) for s in self.sample) < self.cap:
            vals = v.float().cpu().numpy()
            self.sample.append(self.rng.choice(vals, size=min(len(vals), 2000), replace=False))
        row = {"w_mean": v.mean().item(), "w_std": v.std().item() if v.numel() > 1 else 0.0,
               "w_min": v.min().item(), "w_max": v.max().item(),
               "w_entropy": ent.mean().item() if ent.numel() else 0.0,
               "w_head_mass": (mass / mass.sum().clamp(min=1e-12)).tolist()}
        if ref_ce is not None and all(x is not None for x in ref_ce):
            # term (t, k)'s weight belongs to target x_{t+k}: set beside the reference's CE
            # of that token, aligned as weights.rho1_excess aligns them
            ref = torch.cat([(weights.future(x, w.shape[-1]) if x.dim() == 2 else x[..., :w.shape[-1]])
                             .to(w.device)[valid] for x, (w, valid) in zip(ref_ce, step)])
            row["w_ref_spearman"] = spearman(v, ref)
        return row

    def state_dict(self):
        """Saved in checkpoints, so that a resumed run's histograms and sample (what the
        random-matched control draws from) cover the whole run, not only what followed."""
        return {"hist": self.hist.copy(), "sample": [s.copy() for s in self.sample],
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.hist = state["hist"].copy()
        self.sample = [s.copy() for s in state["sample"]]
        self.rng.bit_generator.state = state["rng"]

    def save(self, out_dir):
        np.savez(os.path.join(out_dir, "weight_hist.npz"), bins=self.BINS, counts=self.hist)
        if self.sample:
            np.save(os.path.join(out_dir, "weights_sample.npy"), np.concatenate(self.sample))


def average_ranks(x):
    """Ranks 1..n of the values of x (1-D), tied values given the mean of their ranks."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()                  # the rank of each distinct value's last copy
    return (last - (counts - 1) / 2)[inverse]


def spearman(x, y):
    """Spearman's rank correlation of two 1-D tensors: the Pearson correlation of their
    average ranks (ties averaged, as scipy.stats.spearmanr); nan where either is constant."""
    rx, ry = average_ranks(x.double()), average_ranks(y.double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = (rx.square().sum() * ry.square().sum()).sqrt()
    return (rx * ry).sum().div(den).item() if den > 0 else float("nan")
