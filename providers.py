"""
The inputs a scheme can read, and who computes each: one table.

A scheme declares what it reads (weights.register(name, fn, reads=(...))); for each name,
train.py asks `provide` once per micro-batch. The model's own CE comes from the loss path
(mtp_loss.py) and is passed to every scheme that reads 'ce'; the rest come from here:

    ref_ce    the frozen reference (reference.py): the Loader's cached field, or scored
              online (ref_ce_mode='online'); reading it makes train.py load a reference
    values    the critic's value head (critic.py), V(s_t) detached, 0 at terminal states;
              reading it gives the model a value head and its training (value loss,
              value pre-training, probes)
    rewards   the critic's per-token rewards: the sample's reward on its last transition
    moments   the critic's running moments of its TD errors (weights.RunningMoments)
    any other name: the batch's field of that name (data.Loader.collate: noise,
              is_correct, group, ... whatever the data carries)

A new input is one function here, `(run, mb, fwd) -> tensor`, and its name in PROVIDERS:
run is train.py's namespace (config run.c, device, model, reference, ...), mb the
micro-batch, fwd this micro-batch's forward: fwd.ce (B, T, H) detached (None before the
CE), fwd.values the critic's values (None without a value head), fwd.state the chunked
loss's pass 1 (mtp_loss.forward: the trunk's output, per-head log-sum-exp; None on the
simple path).
"""
import reference


def ref_ce(run, mb, fwd):
    if run.ref is not None:                                   # ref_ce_mode='online'
        targets = mb["targets"] if run.c.rho1_ref == "matched" else None
        return reference.online_ref_ce(run.ref, mb["tokens"], run.ctx, run.c.loss_chunk, targets)
    return mb["ref_ce"].to(run.device)


PROVIDERS = {
    "ref_ce": ref_ce,
    "values": lambda run, mb, fwd: fwd.values,
    "rewards": lambda run, mb, fwd: mb["rewards"],
    "moments": lambda run, mb, fwd: run.moments,
}


def provide(name, run, mb, fwd):
    """The input `name` of one micro-batch mb, on the run's device."""
    if name in PROVIDERS:
        return PROVIDERS[name](run, mb, fwd)
    if name in mb:
        return mb[name].to(run.device)
    raise ValueError(f"weighting={run.c.weighting!r} reads {name!r}, which no provider computes "
                     f"and the batch does not carry (its fields: {sorted(mb)}): add a provider to "
                     f"providers.PROVIDERS, or the field to the data (data.Loader.collate)")
