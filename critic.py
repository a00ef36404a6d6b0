"""
The Verifiable Critic's machinery: what its weights need besides weights.critic.

A value head V(s_t) on the trunk learns from the correctness label alone: the reward
(is_correct) arrives on a solution's last transition (critic_inputs), the value loss fits
GAE targets (critic_value_loss, with an optional trust region and anchor that need the
values of earlier visits: ValueMemory), and probes report its AUC and drift on validation
samples (probe_values, value_auc). train.py runs this machinery when the scheme reads
'values' (providers.py); the rm_critic reads 'rm_reward' too: a frozen reward model's
score replaces the label (load_reward_model, reward_model_scores).
"""
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
import weights
from checkpoint import load_checkpoint
from model import ModelConfig, Transformer


def critic_inputs(mb, c, reward_stats):
    """Rewards and terminal structure of a batch. Sample b ends at e = lengths - 1 (its
    <eot>); the reward for the whole solution arrives on the last transition, at state
    e-1, and every state from e on is terminal with V = 0 (weights.td_errors). The reward
    is the dataset's label is_correct, or a reward model's score where the batch has one
    (mb['rm_reward'], reward_model_scores: the rm_critic)."""
    B, T = mb["tokens"].shape
    e = mb["lengths"].to(mb["tokens"].device) - 1
    pos = torch.arange(T, device=e.device)
    states = pos[None, :] < e[:, None]                               # (B, T) non-terminal states
    r = mb["rm_reward"] if "rm_reward" in mb else mb["is_correct"]
    r = r.to(e.device)
    if c.reward == "pm1":
        r = 2 * r - 1
    elif c.reward == "zscore":
        mean, std = reward_stats
        r = (r - mean) / std
    rewards = torch.zeros(B, T, device=e.device)
    rewards[torch.arange(B, device=e.device), e - 1] = r
    return states, rewards



def load_reward_model(path, device, tok_id, dtype=torch.float32):
    """The rm_critic's reward model: a run of this codebase with a value head (a critic run
    on the same base: its V(s_{e-1}) is a sequence classifier of is_correct), frozen."""
    ckpt = load_checkpoint(path, map_location=device)
    data.check_tokenizer(ckpt["tokenizer"], tok_id, f"reward model {path}")
    if not ckpt["model_args"].get("value_head"):
        raise ValueError(f"reward model {path} has no value head: give rm_init_from a critic run "
                         f"(weighting='critic'), whose V(s) scores a solution's correctness")
    rm = Transformer(ModelConfig(**ckpt["model_args"]))
    rm.load_state_dict(ckpt["model"])
    return rm.to(device=device, dtype=dtype).eval().requires_grad_(False)


def values_and_last(model, mb, ctx, device):
    """A batch's values V(s_t) (B, T) and V(s_{e-1}) (B,), each sample's value just before
    its last token: the critic's belief that the solution is correct."""
    with ctx:
        _, v = model(mb["tokens"].to(device), with_values=True, value_mask=mb["loss_mask"].to(device))
    e = mb["lengths"].to(device) - 1
    return v, v[torch.arange(len(e), device=device), e - 1]


@torch.no_grad()
def reward_model_scores(rm, mb, ctx):
    """(B,) the reward model's V(s_{e-1}) (values_and_last), clamped to [0, 1], the range
    of the labels it learned from."""
    return values_and_last(rm, mb, ctx, mb["tokens"].device)[1].float().clamp(0, 1)


def state_values(values, mb):
    """V(s_t) detached, 0 at the terminal states (mb['states'] False): what the scheme reads."""
    return values.detach() * mb["states"]


def delta_stats(v, rewards, valid, n_future, gamma):
    """(count, sum, sum of squares) of a micro-batch's TD errors on its valid terms, for the
    running moments that whiten them (weights.RunningMoments, updated once a step)."""
    delta = weights.td_errors(v, rewards, n_future, gamma)[valid]
    return torch.stack([torch.tensor(delta.numel(), device=v.device), delta.sum(),
                        delta.pow(2).sum()]).double()


def value_auc(scores, labels):
    """Area under the ROC curve by the rank statistic (Mann-Whitney U), ties averaged."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.argsort()
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores):                                     # average tied ranks
        tie = scores == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def probe_values(model, split, ids, c, ctx, device, pad_id):
    """V(s_{e-1}) (the critic's belief just before the last token) for the given val
    samples, with their labels: for the value AUC and the drift probe."""
    loader = data.Loader(split, c.batch_size, c.block_size, seed=0, correct_only=False, pad_id=pad_id)
    scores, labels, full = [], [], []
    model.eval()
    for i in range(0, len(ids), c.batch_size):
        mb = loader.collate(ids[i:i + c.batch_size])
        if c.length_buckets:
            mb = data.pad_to_bucket(mb, c.block_size, pad_id)
        v, last = values_and_last(model, mb, ctx, device)
        e = mb["lengths"] - 1
        scores += last.float().cpu().tolist()
        labels += mb["is_correct"].bool().tolist()
        full += [v[b, :e[b]].float().cpu() for b in range(len(e))]
    model.train()
    return scores, labels, full


def critic_value_loss(values, v_detached, mb, c, n_states):
    """Squared error to the GAE value targets over non-terminal states, divided by the
    step's global state count. value_clip > 0: PPO's clipped value loss around the values
    this sample got at its previous visit (a trust region against drift);
    value_anchor_coef > 0: plus a pull towards the values at the start of main training.
    Those come from ValueMemory.recall (mb['value_prev'], mb['value_anchor'], NaN where
    none is stored: the current values stand in, so the term is plain there)."""
    _, returns = weights.gae(v_detached, mb["rewards"], c.gamma, c.lam)  # targets, no gradient
    err = (values - returns).pow(2)
    known = lambda old: torch.where(torch.isnan(old), v_detached, old)
    if c.value_clip > 0:
        old = known(mb["value_prev"])
        clipped = old + (values - old).clamp(-c.value_clip, c.value_clip)
        err = torch.maximum(err, (clipped - returns).pow(2))
    if c.value_anchor_coef > 0:
        err = err + c.value_anchor_coef * (values - known(mb["value_anchor"])).pow(2)
    return (err * mb["states"]).sum() / n_states


class ValueMemory:
    """The critic's value of every training token at its sample's previous visit (the
    centre of value_clip's trust region) and, with value_anchor_coef > 0, at the start of
    main training (the anchor); NaN until the sample is seen.

    Sharded so that it scales with the data: rank r keeps the tokens of the samples
    ids[r::world_size] (ids: the Loader's samples, sorted) in one flat float32 row per kept
    value, 1/world_size of the training tokens, on the device, and no row nobody reads (the
    anchor's only with the anchor on; none at all without clip and anchor: train() then
    makes no ValueMemory). Per step, on the device, without a host sync: shapes are fixed
    by the longest training sample, and a token this rank does not hold reads and writes one
    spare slot at the end of its rows instead of being masked out (a boolean mask would sync).
      recall  before the step: every rank's sample ids (all-gather), then one all-reduce
              in which each token's owner gives its stored values and the others zeros,
              so each rank gets exactly the floats the owner holds (x + 0 = x);
      store   after the step: the step's values from every rank (all-gather), each owner
              writing its own samples'.
    The checkpoint holds one (2, split tokens) file in the split's token layout, written
    by rank 0 from every rank's shard in turn: it resumes on any number of processes."""

    def __init__(self, split, ids, anchor, rank, world_size, device):
        self.split, self.all_ids, self.anchor = split, ids, anchor
        self.rank, self.world, self.device = rank, world_size, device
        self.ids, self.starts, self.lengths = self.layout(rank)
        self.T = int(split.index[ids, 1].max()) if len(ids) else 1   # the longest sample
        n = int(self.lengths.sum())
        self.values = torch.full((2 if anchor else 1, n + 1), float("nan"), device=device)
        self.spare = n                                                  # the slot at the end
        self.ids_d = torch.from_numpy(self.ids).to(device)
        self.starts_d = torch.from_numpy(self.starts).to(device)

    def layout(self, rank):
        """Rank `rank`'s samples (sorted), where each starts in its flat rows, their lengths."""
        ids = self.all_ids[rank::self.world]
        lengths = self.split.index[ids, 1].astype(np.int64)
        return ids, np.cumsum(lengths) - lengths, lengths

    def positions(self, rank):
        """For each entry of rank `rank`'s flat rows, its token's position in the split."""
        ids, starts, lengths = self.layout(rank)
        return np.arange(int(lengths.sum())) + np.repeat(self.split.index[ids, 0] - starts, lengths)

    def host(self):
        """This rank's rows as a numpy array (rows, its tokens), without the spare slot."""
        return self.values[:, :-1].cpu().numpy()

    def _gather(self, x, ddp):
        """(n, ...) on every rank -> (world_size * n, ...) in rank order (equal n per rank:
        the Loader's contract), on the device."""
        x = x.to(self.device)
        if not ddp:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x)
        return torch.cat(parts)

    def _mine(self, ids, lengths):
        """(N, T) indices into this rank's rows for the tokens of samples `ids` (the spare
        slot where this rank does not hold the token, or t >= length), and the (N, T) mask
        of those it holds."""
        t = torch.arange(self.T, device=self.device)
        if not len(self.ids):
            held = torch.zeros(len(ids), self.T, dtype=torch.bool, device=self.device)
            return torch.full_like(held, self.spare, dtype=torch.long), held
        j = torch.searchsorted(self.ids_d, ids).clamp(max=len(self.ids) - 1)
        held = (self.ids_d[j] == ids)[:, None] & (t < lengths[:, None])
        return torch.where(held, self.starts_d[j][:, None] + t, self.spare), held

    def recall(self, micro, ddp):
        """Set each micro-batch's mb['value_prev'] (and mb['value_anchor']) (B, T) on the
        device: the stored values of its tokens, NaN where none is stored or t >= length."""
        ids = self._gather(torch.cat([mb["sample_ids"] for mb in micro]), ddp)
        lengths = self._gather(torch.cat([mb["lengths"] for mb in micro]), ddp)
        idx, held = self._mine(ids, lengths)
        out = torch.where(held, self.values[:, idx], 0.0)            # (rows, N, T)
        if ddp:   # one owner per token, zeros from the others: the owner's floats exactly
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        real = torch.arange(self.T, device=self.device) < lengths[:, None]
        out = out.masked_fill(~real, float("nan"))
        n = len(ids) // self.world
        out = out[:, self.rank * n:(self.rank + 1) * n]               # this rank's rows
        names = ("value_prev", "value_anchor")[:len(self.values)]
        s = 0
        for mb in micro:
            B, T_mb = mb["tokens"].shape
            part = F.pad(out[:, s:s + B], (0, max(0, T_mb - self.T)), value=float("nan"))[..., :T_mb]
            mb.update(zip(names, part))
            s += B

    def store(self, seen, ddp):
        """Write this step's values (seen: (sample_ids, lengths, values (B, T)) per
        micro-batch) into their owners' rows."""
        values = torch.cat([F.pad(v[:, :self.T], (0, self.T - min(v.shape[1], self.T)))
                            for _, _, v in seen])                     # (N, T), every rank alike
        ids = self._gather(torch.cat([s for s, _, _ in seen]), ddp)
        lengths = self._gather(torch.cat([n for _, n, _ in seen]), ddp)
        values = self._gather(values, ddp)
        idx, _ = self._mine(ids, lengths)
        self.values[0].index_put_((idx.flatten(),), values.flatten().to(self.values.dtype))
        self.values[0, self.spare] = float("nan")                     # what landed there is nobody's

    def freeze_anchor(self):
        """Main training starts: the anchor is the values as they are now."""
        if self.anchor:
            self.values[1] = self.values[0]

    def save(self, path):
        """A collective: rank 0 writes `path`, a (2, split tokens) float32 .npy in the
        split's token layout (row 1 NaN without the anchor), taking every rank's shard in
        turn, so no rank holds more than one shard; written beside, then renamed."""
        if self.rank == 0:
            tmp = f"{path}.tmp.{os.getpid()}.npy"
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                            shape=(2, len(self.split.tokens)))
            out[:] = np.nan
        for r in range(self.world):
            if r == self.rank == 0:
                shard = self.host()
            elif self.rank == 0:   # the sender's shard: its size is known from the layout
                n = int(self.layout(r)[2].sum())
                buf = torch.empty(len(self.values), n, device=self.device)
                dist.recv(buf, src=r)
                shard = buf.cpu().numpy()
            elif self.rank == r:
                dist.send(self.values[:, :-1].contiguous(), dst=0)
                continue
            else:
                continue
            pos = self.positions(r)
            for row, vals in enumerate(shard):
                out[row, pos] = vals
        if self.rank == 0:
            out.flush()
            del out
            os.replace(tmp, path)

    def load(self, path):
        """This rank's shard from save()'s file (memory-mapped: only the shard is read),
        whatever the number of processes that wrote it."""
        saved = np.load(path, mmap_mode="r")
        pos = self.positions(self.rank)
        for row in range(len(self.values)):
            self.values[row, :-1] = torch.from_numpy(np.ascontiguousarray(saved[row, pos])).to(self.device)
