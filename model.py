"""
The multi-token-prediction (MTP) transformer, written out by hand.

Layout (Gloeckle et al. 2024, "Better & Faster Large Language Models via Multi-token
Prediction", sec. 2): of n_layer Llama blocks, the first n_layer - n_future form a shared
trunk; each of the n_future heads is one more full block reading the same trunk output;
one final RMSNorm and one unembedding are shared by all heads. Head k (1-based) at
position t predicts token t+k. Head 1 is the last entry of `layers` and heads 2..H live in
`extra_heads`, so with n_future = 1 this is a plain Llama with Llama's parameter names.

Shapes: B batch, T time, H heads (future tokens), V vocab, D model width.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int = 320       # byte tokenizer: 256 bytes + specials, rounded up to 64
    n_layer: int = 4            # all blocks: trunk (n_layer - n_future) + one per head
    n_future: int = 2           # H: head k predicts token t+k
    n_head: int = 4             # query heads
    n_kv_head: int = 2          # key/value heads (grouped-query attention)
    d_model: int = 128          # D
    d_ff: int = 352             # SwiGLU hidden width
    max_seq_len: int = 256      # rotary tables are built for this many positions
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    head_dim: int = 0           # per attention head; 0 = d_model // n_head (Gemma-style models differ)
    # rotary frequency scaling of long-context checkpoints: '' none, 'linear' (positions / factor,
    # Chen et al. 2023; CodeLlama-style, DeepSeek-Coder), 'llama3' (Llama 3.1's per-frequency rule)
    rope_scaling_type: str = ""
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0     # 'llama3' only
    rope_high_freq_factor: float = 4.0    # 'llama3' only
    rope_original_max_seq_len: int = 8192  # 'llama3' only: the context length before the extension
    qkv_bias: bool = False      # biases on the q/k/v projections (Qwen2); Llama has none
    tie_embeddings: bool = True
    dropout: float = 0.0
    value_head: bool = False    # V(s_t) on the trunk output, used by the critic scheme
    value_detach: bool = True   # the value loss trains the value head only, never the LM's trunk
    value_surprise: bool = True  # V also reads the LM's surprise at the solution so far (below)

    def __post_init__(self):
        if not 1 <= self.n_future <= self.n_layer:
            raise ValueError(f"need 1 <= n_future <= n_layer, got n_future={self.n_future}, n_layer={self.n_layer}")
        if (not self.head_dim and self.d_model % self.n_head) or self.n_head % self.n_kv_head:
            raise ValueError(f"d_model={self.d_model} must divide by n_head={self.n_head} (or set head_dim), "
                             f"and n_head by n_kv_head={self.n_kv_head}")
        if self.head_size % 2:
            raise ValueError(f"head dim {self.head_size} must be even for rotary embeddings")
        if self.rope_scaling_type not in ("", "linear", "llama3"):
            raise ValueError(f"rope_scaling_type={self.rope_scaling_type!r}: expected '', 'linear' or 'llama3'")

    @property
    def head_size(self):
        """The width of one attention head: head_dim, or d_model // n_head when it is 0."""
        return self.head_dim or self.d_model // self.n_head


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in fp32 even under bf16 autocast, as Llama does
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rotary_tables(head_dim, max_seq_len, theta, c=None):
    """cos/sin of shape (max_seq_len, head_dim/2): Su et al. 2021, eq. 34, with the
    frequency scaling of ModelConfig c (rope_scaling_type) where it asks for one."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)   # (hd/2,)
    if c is not None and c.rope_scaling_type == "linear":
        # position interpolation (Chen et al. 2023): position p is read as p / factor
        inv_freq = inv_freq / c.rope_factor
    elif c is not None and c.rope_scaling_type == "llama3":
        # Llama 3.1 (Meta's reference apply_scaling): wavelengths shorter than
        # original_len / high_freq_factor are kept, those longer than original_len /
        # low_freq_factor are stretched by factor, and the band between is blended linearly
        wavelen = 2 * math.pi / inv_freq
        L, lo, hi = c.rope_original_max_seq_len, c.rope_low_freq_factor, c.rope_high_freq_factor
        smooth = (L / wavelen - lo) / (hi - lo)   # used inside the band only
        blended = (1 - smooth) * inv_freq / c.rope_factor + smooth * inv_freq
        inv_freq = torch.where(wavelen < L / hi, inv_freq,
                               torch.where(wavelen > L / lo, inv_freq / c.rope_factor, blended))
    angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate adjacent pairs (x0, x1) of x (B, T, nh, hd), Meta's interleaved layout, so
    Meta and GGUF Llama weights load without permuting wq/wk."""
    x = x.float().unflatten(-1, (-1, 2))             # (B, T, nh, hd/2, 2)
    x0, x1 = x[..., 0], x[..., 1]
    # (T, hd/2), or (B, T, hd/2) when each row has its own positions (left-padded batches)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)   # broadcast over heads
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head = c.n_head, c.n_kv_head
        self.head_dim = c.head_size
        self.wq = nn.Linear(c.d_model, c.n_head * self.head_dim, bias=c.qkv_bias)
        self.wk = nn.Linear(c.d_model, c.n_kv_head * self.head_dim, bias=c.qkv_bias)
        self.wv = nn.Linear(c.d_model, c.n_kv_head * self.head_dim, bias=c.qkv_bias)
        self.wo = nn.Linear(c.n_head * self.head_dim, c.d_model, bias=False)
        self.dropout = c.dropout

    def forward(self, x, cos, sin, cache=None, mask=None):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim)
        q, k = apply_rotary(q, cos, sin).type_as(v), apply_rotary(k, cos, sin).type_as(v)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))    # (B, nh, T, hd)
        gqa = self.n_kv_head != self.n_head
        if cache is None:   # training and scoring: plain causal attention over these T tokens
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:               # generation: attend to the cache too, as Transformer.decode_inputs' mask says
            k, v = cache.update(k, v)                         # (B, nkv, pos + T, hd)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class KVCache:
    """Keys and values of one block for generation, preallocated to max_seq_len.
    `pos` is how many positions are filled; setting it back rolls the cache back (what
    speculative decoding does after a rejected draft)."""

    def __init__(self, B, n_kv_head, max_seq_len, head_dim, device, dtype):
        self.k = torch.zeros(B, n_kv_head, max_seq_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = 0
        self.at = None   # a (1,) tensor position: Transformer.decode_step's static-shape writes

    def repeat_rows(self, n):
        """Each row n times in a row (a prompt prefilled once, then sampled n times)."""
        self.k, self.v = self.k.repeat_interleave(n, 0), self.v.repeat_interleave(n, 0)

    def update(self, k, v):
        if self.at is not None:   # one token at a tensor position; the whole cache returned, masked by the caller
            self.k.index_copy_(2, self.at, k)
            self.v.index_copy_(2, self.at, v)
            return self.k, self.v
        T = k.shape[2]
        if self.pos + T > self.k.shape[2]:
            raise ValueError(f"generation exceeds the cache's {self.k.shape[2]} positions")
        self.k[:, :, self.pos:self.pos + T] = k
        self.v[:, :, self.pos:self.pos + T] = v
        self.pos += T
        return self.k[:, :, :self.pos], self.v[:, :, :self.pos]


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x)."""
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.w2 = nn.Linear(c.d_ff, c.d_model, bias=False)
        self.w3 = nn.Linear(c.d_model, c.d_ff, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attention = Attention(c)
        self.ffn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.feed_forward = FeedForward(c)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, cos, sin, cache=None, mask=None):
        x = x + self.drop(self.attention(self.attention_norm(x), cos, sin, cache, mask))
        return x + self.drop(self.feed_forward(self.ffn_norm(x)))


class ValueHead(nn.Module):
    """V(s_t) for the Verifiable Critic: a small MLP on the trunk state, computed and
    returned in fp32 because TD errors are small differences of values. With
    value_surprise it also reads surprise_features(): a large pretrained LM's state tells
    good code from bad, a tiny model's does not, but its own surprise at a token does."""
    N_SURPRISE = 3

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.fc = nn.Linear(c.d_model + (self.N_SURPRISE if c.value_surprise else 0), c.d_model)
        self.out = nn.Linear(c.d_model, 1)

    def forward(self, h, extra=None):
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = self.norm(h.float())
            if extra is not None:
                h = torch.cat([h, extra.float()], dim=-1)
            return self.out(F.silu(self.fc(h))).squeeze(-1)   # (B, T)


def surprise_features(logits1, idx, mask=None):
    """(B, T, 3) features of state s_t from head 1's logits (B, T, V) and the tokens: the
    surprise -log p(x_t | x_<t) of the latest token, and its running max and mean over the
    solution so far (tokens where mask is 1; all but the first if mask is None). A function
    of the prefix only, so V stays a function of the state; computed without gradient."""
    with torch.no_grad():
        lp = torch.log_softmax(logits1[:, :-1].float(), dim=-1).gather(-1, idx[:, 1:, None]).squeeze(-1)
        return surprise_from_ce(F.pad(-lp, (0, 1)), mask)


def surprise_from_ce(ce_next, mask=None):
    """surprise_features from head 1's CE of the next token, ce_next[:, t] =
    -log p(x_{t+1} | x_<=t) (B, T), as the chunked loss has it without logits: (B, T, 3)."""
    with torch.no_grad():
        s = F.pad(ce_next[:, :-1], (1, 0))                            # s[:, t]: surprise of x_t
        m = torch.ones_like(s) if mask is None else mask.float()
        m[:, 0] = 0                                                   # x_0 is never predicted
        s = s * m
        run_max = torch.cummax(s, dim=1).values
        run_mean = s.cumsum(dim=1) / m.cumsum(dim=1).clamp(min=1)
        return torch.stack([s, run_max, run_mean], dim=-1)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = self.config = config
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.d_model)
        # trunk blocks followed by head 1; heads 2..H are parallel blocks on the trunk output
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layer - c.n_future + 1))
        self.extra_heads = nn.ModuleList(Block(c) for _ in range(c.n_future - 1))
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.output = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rotary_tables(c.head_size, c.max_seq_len, c.rope_theta, c)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2 / nanoGPT: shrink residual projections by 1/sqrt(2 * depth) so the
        # residual stream's variance does not grow with the number of blocks
        for name, p in self.named_parameters():
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))
        # built last, so a model with a value head starts from the same LM weights as one
        # without (same seed): the critic arm and the baseline share their initialisation
        self.value_head = ValueHead(c) if c.value_head else None
        if self.value_head is not None:
            self.value_head.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def heads(self):
        """The H head blocks in order: head k at index k-1."""
        return [self.layers[-1], *self.extra_heads]

    def forward(self, idx, with_values=False, caches=None, value_mask=None, n_heads=None):
        """idx (B, T) int64 -> logits (B, T, H, V); with_values also returns V(s_t) (B, T),
        value_mask (B, T) marking the solution's tokens for its surprise features.
        caches (from new_caches) makes this a generation step: idx are the next T tokens
        after the caches' filled positions. n_heads computes only the first n heads (plain
        sampling needs head 1 alone; the other heads' caches are then left behind)."""
        B, T = idx.shape
        if caches:
            cos, sin, mask = self.decode_inputs(caches[0].pos, T)
        else:
            if T > self.config.max_seq_len:
                raise ValueError(f"sequence length {T} exceeds max_seq_len={self.config.max_seq_len}")
            cos, sin, mask = self.rope_cos[:T], self.rope_sin[:T], None
        n_trunk = len(self.layers) - 1
        caches = caches or [None] * self.config.n_layer  # trunk blocks first, then heads 1..H
        x = self.tok_embeddings(idx)                     # (B, T, D)
        for block, cache in zip(self.layers[:-1], caches):
            x = block(x, cos, sin, cache, mask)
        trunk = x                                        # un-normalised, read by every head
        heads = self.heads[:n_heads] if n_heads else self.heads
        h = torch.stack([head(trunk, cos, sin, cache, mask)
                         for head, cache in zip(heads, caches[n_trunk:])], dim=2)  # (B, T, H, D)
        logits = self.output(self.norm(h))               # (B, T, H, V)
        if not with_values:
            return logits
        if self.value_head is None:
            raise ValueError("with_values=True needs ModelConfig(value_head=True)")
        c = self.config
        extra = surprise_features(logits[:, :, 0], idx, value_mask) if c.value_surprise else None
        return logits, self.value_head(trunk.detach() if c.value_detach else trunk, extra)

    # ---- forward in pieces, for the memory-efficient loss (mtp_loss.py) ---------------
    def trunk_forward(self, idx):
        """idx (B, T) -> the trunk's output (B, T, D), un-normalised as every head reads it,
        and the rotary tables (cos, sin) for these T positions. forward() in two pieces:
        this, then head_hidden() per head, gives forward()'s logits head by head."""
        T = idx.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={self.config.max_seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.tok_embeddings(idx)                     # (B, T, D)
        for block in self.layers[:-1]:
            x = block(x, cos, sin)
        return x, cos, sin

    def head_hidden(self, k, trunk, cos, sin):
        """Head k's (0-based) normalised state (B, T, D) on the trunk output: what the shared
        unembedding turns into that head's logits."""
        head = self.layers[-1] if k == 0 else self.extra_heads[k - 1]
        return self.norm(head(trunk, cos, sin))

    # ---- generation ----------------------------------------------------------------
    def new_caches(self, B, length=None, n_blocks=None):
        """One KV cache per block (trunk blocks, then heads 1..H), as forward expects, each
        of `length` positions (max_seq_len); n_blocks: only the first n (the trunk and head
        1 for plain sampling)."""
        c, p = self.config, self.tok_embeddings.weight
        return [KVCache(B, c.n_kv_head, length or c.max_seq_len, c.head_size, p.device, p.dtype)
                for _ in range(n_blocks or c.n_layer)]

    def decode_inputs(self, start, T, pad=None):
        """Rotary tables and attention mask for T new tokens after `start` cached positions:
        query i sees the keys at positions <= start + i (no mask needed for one token).
        pad (B,) int64: rows left-padded to one length, row b's tokens at cache positions
        >= pad[b]; its rotary positions count from there and no query sees a pad key (a pad
        query sees itself, so no row of the mask is empty and nothing turns NaN)."""
        dev = self.rope_cos.device
        q_pos = torch.arange(start, start + T, device=dev)               # (T,) cache positions
        k_pos = torch.arange(start + T, device=dev)                      # (S,)
        if pad is None:
            if start + T > self.config.max_seq_len:
                raise ValueError(f"sequence length {start + T} exceeds max_seq_len={self.config.max_seq_len}")
            mask = None if T == 1 else k_pos[None, :] <= q_pos[:, None]  # (T, S)
            return self.rope_cos[start:start + T], self.rope_sin[start:start + T], mask
        pos = (q_pos[None, :] - pad[:, None]).clamp(min=0)               # (B, T) rotary positions
        mask = (k_pos <= q_pos[:, None]) & ((k_pos >= pad[:, None, None]) | (k_pos == q_pos[:, None]))
        return self.rope_cos[pos], self.rope_sin[pos], mask[:, None]     # mask (B, 1, T, S)

    @torch.no_grad()
    def generate(self, prompt, max_new_tokens, n=1, temperature=0.0, top_p=1.0, eos_id=None,
                 stop=None, generator=None, n_vocab=None, uniforms=None):
        """Sample n continuations of one prompt (a list of token ids) from head 1, batched,
        with a KV cache: the readable reference for generate_batch. temperature 0 is
        greedy. stop(row_tokens) -> bool may end a row early (stop sequences); rows end at
        eos_id too. Ids >= n_vocab (the embedding's padding beyond the tokenizer) are never
        produced. Draws come from `generator`, or row b's i-th token from uniforms[b, i]
        (sample_next). Returns n lists of new token ids."""
        caches = self.new_caches(n)
        max_new_tokens = min(max_new_tokens, self.config.max_seq_len - len(prompt))
        idx = torch.tensor([prompt] * n, device=self.tok_embeddings.weight.device)  # (n, T)
        step = lambda x: self(x, caches=caches, n_heads=1)[:, -1, 0, :n_vocab]   # (n, V)
        logits = step(idx)
        out, done = [[] for _ in range(n)], [False] * n
        for i in range(max_new_tokens):
            u = None if uniforms is None else uniforms[:, i]
            nxt = sample_next(logits.float(), temperature, top_p, generator, u)   # (n,)
            for b in range(n):
                if not done[b]:
                    out[b].append(int(nxt[b]))
                    done[b] = (eos_id is not None and out[b][-1] == eos_id) or \
                        bool(stop and stop(out[b]))
            if all(done):
                break
            logits = step(nxt[:, None])
        return [o[:-1] if eos_id is not None and o and o[-1] == eos_id else o for o in out]

    @torch.no_grad()
    def generate_speculative(self, prompt, max_new_tokens, eos_id=None, stop=None, n_vocab=None):
        """Greedy decoding accelerated by the MTP heads (blockwise parallel decoding, Stern
        et al. 2018; Gloeckle et al. 2024, sec. 3.2). Heads 2..H draft the tokens after head
        1's next token; one forward over the draft lets head 1 verify them; the longest
        agreeing prefix is kept and the KV caches are rolled back past the rest. Output is
        token for token plain greedy decoding's. Returns (tokens, accepted drafts per head)."""
        H = self.config.n_future
        caches = self.new_caches(1)
        max_new_tokens = min(max_new_tokens, self.config.max_seq_len - len(prompt))
        dev = self.tok_embeddings.weight.device
        logits = self(torch.tensor([prompt], device=dev), caches=caches)[0, -1, :, :n_vocab]  # (H, V)
        out, accepted = [], [0] * H           # accepted[k-1]: drafts of head k kept
        proposed = [0] * H
        while len(out) < max_new_tokens:
            draft = logits.argmax(-1).tolist()   # head 1's token is greedy's; 2..H guess beyond
            draft = draft[:max_new_tokens - len(out)]
            pos = caches[0].pos
            block = self(torch.tensor([draft], device=dev), caches=caches)[0, :, :, :n_vocab]  # (len, H, V)
            verified = block[:, 0].argmax(-1).tolist()   # head 1's choice after each draft token
            n_ok = 1                                     # draft[0] is head 1's own greedy token
            while n_ok < len(draft) and draft[n_ok] == verified[n_ok - 1]:
                n_ok += 1
            for k in range(1, len(draft)):
                proposed[k] += 1
                accepted[k] += k < n_ok
            new = draft[:n_ok]
            for c in caches:                     # roll back past the rejected drafts
                c.pos = pos + n_ok
            logits = block[n_ok - 1]
            for tok in new:
                out.append(tok)
                if (eos_id is not None and tok == eos_id) or (stop and stop(out)):
                    return (out[:-1] if tok == eos_id else out), self._rates(accepted, proposed)
        return out, self._rates(accepted, proposed)

    @torch.no_grad()
    def generate_speculative_batch(self, prompts, max_new_tokens, eos_id=None, stop=None, n_vocab=None):
        """generate_speculative for many prompts at once: each step every row drafts H
        tokens (head 1's greedy token, then heads 2..H's guesses), one forward over all rows'
        drafts lets head 1 verify them, and each row keeps its own agreeing prefix. Rows
        accept different numbers of drafts, so nothing is rolled back: every step writes H
        cache slots for every row, a row's rejected slots are marked invalid (attention
        masks them, rotary positions count only valid ones). Heads 2..H are projected to the
        vocabulary at each row's last accepted position only. Output is token for token
        greedy decoding's (up to the float rounding batching changes). prompts: lists of
        token ids of any lengths (left-padded). Returns (per prompt its new tokens, accepted
        drafts per head)."""
        c, dev = self.config, self.tok_embeddings.weight.device
        H, B, L = c.n_future, len(prompts), max(map(len, prompts))
        max_new_tokens = max(0, min(max_new_tokens, c.max_seq_len - L))
        n_trunk = len(self.layers) - 1
        blocks = list(self.layers[:-1]) + list(self.heads)              # trunk, then heads 1..H
        caches = self.new_caches(B, L + H * max_new_tokens + 1)         # <= max_new_tokens steps
        pad = torch.tensor([L - len(p) for p in prompts], device=dev)
        idx = torch.tensor([[0] * (L - len(p)) + p for p in prompts], device=dev)   # (B, L)
        valid = torch.zeros(B, caches[0].k.shape[2], dtype=torch.bool, device=dev)  # (B, slots)
        valid[:, :L] = torch.arange(L, device=dev)[None] >= pad[:, None]
        length = L - pad                                                 # each row's valid tokens
        rows = torch.arange(B, device=dev)

        def run(x, cos, sin, mask):   # -> each head's normalised states (B, T, H, D)
            x = self.tok_embeddings(x)
            for block, cache in zip(blocks[:n_trunk], caches):
                x = block(x, cos, sin, cache, mask)
            return torch.stack([self.norm(head(x, cos, sin, cache, mask))
                                for head, cache in zip(blocks[n_trunk:], caches[n_trunk:])], dim=2)

        cos, sin, mask = self.decode_inputs(0, L, pad)
        logits = self.output(run(idx, cos, sin, mask)[:, -1])[..., :n_vocab]   # (B, H, V)
        out, done = [[] for _ in range(B)], [max_new_tokens == 0] * B
        accepted, proposed = [0] * H, [0] * H
        causal = torch.ones(H, H, dtype=torch.bool, device=dev).tril()
        while not all(done):
            draft = logits.argmax(-1)                                    # (B, H)
            P = caches[0].pos
            pos = (length[:, None] + torch.arange(H, device=dev)).clamp(max=c.max_seq_len - 1)
            mask = torch.cat([valid[:, None, :P].expand(B, H, P), causal.expand(B, H, H)], -1)[:, None]
            h = run(draft, self.rope_cos[pos], self.rope_sin[pos], mask)   # (B, H positions, H heads, D)
            verified = self.output(h[:, :, 0])[..., :n_vocab].argmax(-1)   # (B, H): head 1 after each draft
            n_ok = 1 + (draft[:, 1:] == verified[:, :-1]).long().cumprod(1).sum(1)   # (B,)
            valid[:, P:P + H] = torch.arange(H, device=dev)[None] < n_ok[:, None]
            length = length + n_ok
            logits = self.output(h[rows, n_ok - 1])[..., :n_vocab]      # (B, H, V) at the last kept
            for b, (d, n) in enumerate(zip(draft.tolist(), n_ok.tolist())):
                if done[b]:
                    continue
                room = max_new_tokens - len(out[b])
                for k in range(1, min(H, room)):
                    proposed[k] += 1
                    accepted[k] += k < n
                for tok in d[:min(n, room)]:
                    out[b].append(tok)
                    if (eos_id is not None and tok == eos_id) or (stop and stop(out[b])):
                        done[b] = True
                        if tok == eos_id:
                            out[b].pop()
                        break
                done[b] = done[b] or len(out[b]) >= max_new_tokens
        return out, self._rates(accepted, proposed)

    def next_logits(self, idx, caches, pad=None):
        """Head 1's logits at the last position only (B, V), advancing the caches by the T
        tokens of idx (B, T): the trunk and head 1, nothing of the other heads, and the
        unembedding of one position (a prefill of T tokens does not project T x V).
        pad: left-padding per row (decode_inputs)."""
        cos, sin, mask = self.decode_inputs(caches[0].pos, idx.shape[1], pad)
        x = self.tok_embeddings(idx)                                  # (B, T, D)
        for block, cache in zip(self.layers, caches):                 # trunk, then head 1
            x = block(x, cos, sin, cache, mask)
        return self.output(self.norm(x[:, -1]))                       # (B, V)

    def decode_step(self, tok, caches, at, pad):
        """next_logits for one token per row with shapes that never change, so torch.compile
        makes one graph for every step (gpt-fast's decode step): the position is a tensor
        `at` (1,) the caches write to (KVCache.at), and attention reads the whole cache
        with a mask (positions after `at` and each row's padding masked). tok (B, 1),
        pad (B,) -> head 1's logits (B, V). compile_decode() compiles it."""
        k_pos = torch.arange(caches[0].k.shape[2], device=tok.device)         # (S,)
        pos = (at - pad).clamp(min=0)                                          # (B,) rotary positions
        cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]    # (B, 1, hd/2)
        mask = ((k_pos <= at) & (k_pos >= pad[:, None]))[:, None, None]        # (B, 1, 1, S)
        x = self.tok_embeddings(tok)                                           # (B, 1, D)
        for block, cache in zip(self.layers, caches):                         # trunk, then head 1
            x = block(x, cos, sin, cache, mask)
        return self.output(self.norm(x[:, -1]))                                # (B, V)

    def compile_decode(self, **kwargs):
        """Make generate_batch decode through torch.compile(decode_step) (kwargs: torch.compile's,
        e.g. mode='reduce-overhead' for CUDA graphs). A new batch size or cache length
        compiles again; prompts of a batch share one cache length."""
        self.compiled_decode = torch.compile(self.decode_step, fullgraph=True, dynamic=False, **kwargs)
        return self

    @torch.no_grad()
    def generate_batch(self, prompts, max_new_tokens, n=1, temperature=0.0, top_p=1.0,
                       eos_id=None, stop=None, uniforms=None, n_vocab=None, check_every=16):
        """n continuations of each of several prompts, all rows decoded together: generate()'s
        tokens for each prompt (up to float rounding, which batching changes), without a host
        sync per token. prompts: lists of token ids of any lengths, left-padded to one
        length (decode_inputs masks the padding); each is prefilled once and its cache
        repeated n times; caches for the trunk and head 1 only, as long as the longest
        prompt plus max_new_tokens; head 1's logits at the last position only; rows finished
        (eos, stop) tracked on the device, the host looking every check_every tokens (stop
        strings are Python). uniforms (len(prompts) * n, max_new_tokens) in [0, 1): the
        draws of each row (sample_next), so what a row samples does not depend on which
        rows share its batch. Returns, per prompt, n lists of new token ids."""
        c, dev = self.config, self.tok_embeddings.weight.device
        P, L = len(prompts), max(map(len, prompts))
        max_new_tokens = max(0, min(max_new_tokens, c.max_seq_len - L))
        if temperature > 0 and (uniforms is None or uniforms.shape[0] != P * n
                                or uniforms.shape[1] < max_new_tokens):
            raise ValueError(f"sampling {P} prompts x n={n} for {max_new_tokens} tokens needs "
                             f"uniforms of shape ({P * n}, >= {max_new_tokens})")
        pad = torch.tensor([L - len(p) for p in prompts], device=dev)            # (P,)
        idx = torch.tensor([[0] * (L - len(p)) + p for p in prompts], device=dev)  # (P, L)
        caches = self.new_caches(P, L + max_new_tokens, n_blocks=len(self.layers))
        logits = self.next_logits(idx, caches, pad)[:, :n_vocab]                  # (P, V)
        if n > 1:   # prefill once per prompt, then n rows each
            for cache in caches:
                cache.repeat_rows(n)
            logits, pad = logits.repeat_interleave(n, 0), pad.repeat_interleave(n)
        B = P * n
        step = getattr(self, "compiled_decode", None)
        if step is not None:   # static shapes from here: every cache writes at the tensor `at`
            at = torch.tensor([L], device=dev)
            for cache in caches:
                cache.at = at
        u_all = None if uniforms is None else uniforms.to(dev)
        out = torch.empty(B, max_new_tokens, dtype=torch.long, device=dev)      # (B, new)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        ends = torch.full((B,), max_new_tokens, dtype=torch.long, device=dev)   # row b's length
        checked = 0                                                   # tokens stop() has seen
        for i in range(max_new_tokens):
            u = None if temperature == 0 else u_all[:, i]
            nxt = sample_next(logits.float(), temperature, top_p, u=u)          # (B,)
            out[:, i] = nxt
            if eos_id is not None:   # a row ends after its eos (cut below), as generate()
                hit = (nxt == eos_id) & ~done
                ends = torch.where(hit, i + 1, ends)
                done |= hit
            if (i + 1) % check_every == 0 or i == max_new_tokens - 1:
                if stop is not None:   # the first prefix stop() accepts, as generate() finds it
                    rows, ends_now = out[:, :i + 1].tolist(), ends.tolist()   # one transfer
                    for b in range(B):
                        for j in range(checked, min(i + 1, ends_now[b])):
                            if stop(rows[b][:j + 1]):
                                ends_now[b] = j + 1
                                break
                    ends, checked = torch.tensor(ends_now, device=dev), i + 1
                done = ends <= i + 1
                if bool(done.all()):
                    break
            if step is None:
                logits = self.next_logits(nxt[:, None], caches, pad)[:, :n_vocab]
            else:
                logits = step(nxt[:, None], caches, at, pad)[:, :n_vocab].clone()
                at += 1
        rows = [r[:e] for r, e in zip(out.tolist(), ends.tolist())]
        rows = [r[:-1] if eos_id is not None and r and r[-1] == eos_id else r for r in rows]
        return [rows[i * n:(i + 1) * n] for i in range(P)]

    @staticmethod
    def _rates(accepted, proposed):
        return [a / p if p else None for a, p in zip(accepted, proposed)]

    # ---- bookkeeping -------------------------------------------------------------
    def num_params(self, non_embedding=True):
        """Parameter count; the (tied) embedding is left out by default, as nanoGPT does."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embeddings.weight.numel()
        return n

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (PaLM appendix B): 6 per weight it passes through plus
        attention. Every token passes through all n_layer blocks (trunk + H heads) and the
        unembedding H times, so the shared unembedding counts once per head."""
        c = self.config
        blocks = sum(p.numel() for p in self.layers.parameters()) + \
            sum(p.numel() for p in self.extra_heads.parameters())
        unembed = c.n_future * c.vocab_size * c.d_model
        attention = 12 * c.n_layer * c.n_head * c.head_size * seq_len
        return 6 * (blocks + unembed) + attention

    def estimate_mfu(self, tokens_per_s, seq_len, peak_flops, n_devices=1):
        """Model FLOPs utilisation: achieved FLOP/s per device over one device's peak FLOP/s.
        tokens_per_s: the throughput of all n_devices together."""
        return self.flops_per_token(seq_len) * tokens_per_s / (n_devices * peak_flops)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # decay matrices (weights, embeddings); never gains or biases
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas,
                                 fused=device_type == "cuda")


def sample_next(logits, temperature, top_p, generator=None, u=None):
    """logits (B, V) -> next tokens (B,): greedy at temperature 0, else nucleus sampling
    (Holtzman et al. 2020) over the smallest set of tokens with probability >= top_p.
    The draw is torch.multinomial's from `generator`, or, given u (B,) uniforms in [0, 1),
    the inverse CDF's: the token where the cumulative probability passes u, so that each
    row's draw is its own number whatever else is in the batch."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_p = order = None
    if top_p < 1.0 or u is not None:
        sorted_p, order = probs.sort(dim=-1, descending=True)
    if top_p < 1.0:
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p      # mass before it already >= p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    if u is None:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    cdf = sorted_p.cumsum(-1)                                  # (B, V), its last entry the mass kept
    pick = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1])[:, None], right=True)
    last = (sorted_p > 0).sum(-1, keepdim=True) - 1            # rounding never picks a dropped token
    return order.gather(-1, torch.minimum(pick, last)).squeeze(-1)


# ---- targets and per-(t, k) loss --------------------------------------------------
def mtp_targets(tokens, loss_mask, n_future):
    """targets[b, t, k-1] = tokens[b, t+k] if t+k < T and loss_mask[b, t+k], else -1.

    loss_mask marks the tokens that may be *predicted* (completion tokens), not the
    positions that predict: a prompt position t may predict completion token t+k.
    tokens (B, T) int64, loss_mask (B, T) bool -> (B, T, H) int64.
    """
    B, T = tokens.shape
    targets = torch.full((B, T, n_future), -1, dtype=torch.long, device=tokens.device)
    for k in range(1, n_future + 1):
        if k < T:
            future = tokens[:, k:]                       # token t+k for t in [0, T-k)
            targets[:, :T - k, k - 1] = torch.where(loss_mask[:, k:].bool(), future, -1)
    return targets


def mtp_cross_entropy(logits, targets):
    """Per-(t, k) cross-entropy in fp32, 0 where the target is ignored (-1).
    logits (B, T, H, V), targets (B, T, H) -> (B, T, H)."""
    ce = F.cross_entropy(logits.float().flatten(0, 2), targets.flatten(),
                         ignore_index=-1, reduction="none")
    return ce.view(targets.shape)


def mtp_entropy(logits, targets):
    """Predictive entropy of each head's distribution, in fp32, detached, 0 where the
    target is ignored (-1): H[t, k] = -sum_v p_k(v | x_<=t) log p_k(v | x_<=t).
    logits (B, T, H, V), targets (B, T, H) -> (B, T, H); mtp_loss.forward's entropy is this,
    computed in chunks of the vocabulary projection."""
    logp = F.log_softmax(logits.detach().float(), dim=-1)
    return torch.where(targets >= 0, -(logp.exp() * logp).sum(-1), 0.0)
