"""bench.py times the same work on each loss path: the three arms of its loss part
(simple, chunked two-pass, chunked one-pass) leave the same gradients.

    OMP_NUM_THREADS=1 python -m pytest tests/test_bench.py -q
"""
import pytest
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


def test_rho1_keys_are_train_defaults():
    """The weighted part's Rho-1 is the default Rho-1 (bench.py keeps its own copy of the
    keys so that the GPU check imports nothing beyond torch)."""
    import train
    assert {k: train.DEFAULTS[k] for k in bench.RHO1 if k != "weighting"} == \
        {k: v for k, v in bench.RHO1.items() if k != "weighting"}


@pytest.mark.slow
def test_the_gpu_parts_run_with_torch_alone_and_write_their_tables(tmp_path):
    """The GPU check's parts (loss, weighted with its memory children, decode; the memory
    part's children are the weighted part's), at toy shapes on the CPU with a fake device
    peak (the MFU columns), in
    a Python where numpy, tiktoken, datasets, scipy, matplotlib and tqdm cannot be imported
    (the GPU machine has torch alone), its child processes too; --report gets the tables."""
    import os
    import subprocess
    import sys
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nfor m in ('numpy', 'tiktoken', 'datasets', 'scipy', 'matplotlib', 'tqdm'):\n"
        "    sys.modules[m] = None\n")
    here = os.path.dirname(os.path.abspath(bench.__file__))
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{here}", PYTHONWARNINGS="ignore")
    report = tmp_path / "gpu.md"
    args = ["--parts=loss,weighted,decode", "--n_layer=5", "--d_model=32", "--seq_len=16",
            "--vocab_sizes=96", "--mem_vocab_sizes=96", "--repeats=1", "--batch_size=2",
            "--mem_batch_size=1", "--peak_flops=1e12", f"--report={report}"]   # a fake peak: the MFU path
    out = subprocess.run([sys.executable, os.path.join(here, "bench.py"), *args], env=env, cwd=here,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = report.read_text()
    for title in ("## loss path", "; MFU: H1 simple", "## weighted step", "decode (eager)", "decode (compiled)"):
        assert title in text, title
    assert text.strip() and out.stdout.strip().endswith(text.strip())   # after the configurator's lines
