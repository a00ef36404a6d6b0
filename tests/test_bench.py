"""bench.py times the same work on each loss path: the three arms of its loss part
(simple, chunked two-pass, chunked one-pass) leave the same gradients.

    OMP_NUM_THREADS=1 python -m pytest tests/test_bench.py -q
"""
import torch

import bench


def test_the_three_loss_paths_compute_the_same_gradients():
    c = dict(bench.defaults, n_layer=3, d_model=32, seq_len=16, loss_chunk=5)
    got = {}
    for impl in bench.IMPLS:
        model = bench.model_for(c, V=96, H=2)
        bench.make_step(model, impl, B=2, T=16, c=c)()
        got[impl] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for impl in bench.IMPLS[1:]:
        assert got[impl].keys() == got["simple"].keys()
        for n, g in got["simple"].items():
            torch.testing.assert_close(got[impl][n], g, rtol=1e-5, atol=1e-6, msg=(impl, n))


def test_the_weighted_parts_two_rho1_paths_compute_the_same_gradients():
    """The weighted part's Rho-1 arms (two passes; one pass with the weights inside) do
    the same work: equal gradients, and unlike the uniform arm's (the weights act)."""
    c = dict(bench.defaults, n_layer=3, d_model=32, seq_len=16, loss_chunk=5)
    got = {}
    for impl in bench.WEIGHTED:
        model = bench.model_for(c, V=96, H=2)
        bench.make_step(model, impl, B=2, T=16, c=c)()
        got[impl] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n, g in got["rho1 two-pass"].items():
        torch.testing.assert_close(got["rho1 one-pass"][n], g, rtol=1e-5, atol=1e-6, msg=n)
    assert any(not torch.allclose(got["uniform one-pass"][n], g) for n, g in got["rho1 two-pass"].items())
