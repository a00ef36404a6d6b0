"""
Statistics of evaluated runs: pass@k, bootstrap confidence intervals, paired tests. Plain
numpy (scipy for the Wilcoxon test) and no torch, so `eval.py compare` and report.py need
neither a model nor a GPU.

    stats.pass_at_k(n=200, c=13, k=10)               # one problem's unbiased pass@k
    mean, lo, hi = stats.bootstrap_ci(per_problem)   # 95% CI over problems
    mean, lo, hi = stats.bootstrap_ci_seeds(mat)     # mat (seeds, problems): seeds resampled too
    stats.paired_test(a, b)["p"]                     # Wilcoxon signed-rank, b against a

pass@k is Chen et al. 2021's unbiased estimator; CIs are percentile bootstraps over
problems (bootstrap_ci_seeds resamples the training seeds too, so its interval holds the
seed-to-seed spread); paired_test pairs by problem or by seed, whichever it is given.
"""
import numpy as np


def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1):
    1 - C(n-c, k) / C(n, k), as a product that stays finite for large n."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least k={k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def bootstrap_ci(values, n_boot=10000, seed=0):
    """(mean, lo, hi): the mean and a percentile-bootstrap 95% CI, resampling the values
    (problems) with replacement; seeded, so the same values give the same interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-d array, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // len(x))   # at most ~2M resampled indices (16 MB) at a time
    for i in range(0, n_boot, step):
        b = min(step, n_boot - i)
        means[i:i + b] = x[rng.integers(0, len(x), size=(b, len(x)))].mean(axis=1)   # (b,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(x.mean()), float(lo), float(hi)


def bootstrap_ci_seeds(mat, base=None, n_boot=10000, seed=0):
    """(mean, lo, hi) of pass@k over seeds and problems: mat is (seeds, problems). Each
    bootstrap draw resamples the seeds and the problems, so the interval holds the
    seed-to-seed spread of training as well as the sampling of problems (a CI over
    problems alone hides it). With base (seeds', problems), the same for the difference
    mean(mat) - mean(base): problems drawn once for both (paired), seeds for each."""
    mat = np.asarray(mat, dtype=np.float64)
    if mat.ndim != 2 or mat.size == 0:
        raise ValueError(f"bootstrap_ci_seeds needs a non-empty (seeds, problems) array, got {mat.shape}")
    rng = np.random.default_rng(seed)
    S, P = mat.shape
    if base is not None:   # paired by problem: column j of both must be the same problem
        base = np.asarray(base, dtype=np.float64)
        if base.ndim != 2 or base.shape[1] != P or base.shape[0] == 0:
            raise ValueError(f"base must be (seeds, problems) over the same {P} problems as mat, "
                             f"got shape {base.shape}")

    def draw(m, pj):
        si = rng.integers(0, m.shape[0], size=(len(pj), m.shape[0]))          # (b, S)
        return m[si[:, :, None], pj[:, None, :]].mean(axis=(1, 2))            # (b,)

    means, step = np.empty(n_boot), max(1, 2_000_000 // (S * P))
    for i in range(0, n_boot, step):
        pj = rng.integers(0, P, size=(min(step, n_boot - i), P))                # (b, P)
        means[i:i + len(pj)] = draw(mat, pj) - (draw(base, pj) if base is not None else 0.0)
    lo, hi = np.percentile(means, [2.5, 97.5])
    point = mat.mean() - (np.mean(base) if base is not None else 0.0)
    return float(point), float(lo), float(hi)


def paired_test(a, b, n_boot=10000, seed=0):
    """b against a on paired values (same problems, or same seeds, in the same order):
    delta = mean(b - a) with a bootstrap 95% CI, and the two-sided Wilcoxon signed-rank p.
    Zero differences are dropped (Wilcoxon's convention): pairs that tie say nothing of
    direction. All pairs tied -> p = 1."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_test needs two 1-d arrays of one length, got {a.shape} and {b.shape}")
    try:
        from scipy.stats import wilcoxon
    except ImportError:
        raise ImportError("paired_test needs scipy for the Wilcoxon signed-rank test: "
                          "pip install scipy") from None
    d = b - a
    delta, lo, hi = bootstrap_ci(d, n_boot, seed)
    p = float(wilcoxon(b, a).pvalue) if np.any(d != 0) else 1.0
    return {"n": len(d), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "delta": delta, "lo": lo, "hi": hi, "p": p}
