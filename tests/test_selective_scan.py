"""The selective scan: torch backend against an independent float64 recurrence, backend selection,
fvcore counting, and (on a GPU with mamba_ssm) the cuda backend against the torch backend."""
import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch
import torch.nn.functional as F

import segbench.nn.selective_scan as scan
from segbench.nn.selective_scan import (
    FVCORE_OP_NAME,
    resolve_backend,
    selective_scan_flop_jit,
    selective_scan_flops,
    selective_scan_fn,
)

HAS_COMPILER = scan._compiler() is not None
IMPLEMENTATIONS = [
    pytest.param("kernel", marks=pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler for the CPU kernel")),
    "chunked",
]


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The textbook recurrence, one time step after another, in float64."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    per_group = dim // B.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    state = u.new_zeros(batch, dim, A.shape[1])
    outputs = []
    for t in range(length):
        B_t = B[:, :, :, t].repeat_interleave(per_group, dim=1)
        C_t = C[:, :, :, t].repeat_interleave(per_group, dim=1)
        dt = delta[:, :, t, None]
        state = torch.exp(dt * A) * state + dt * B_t * u[:, :, t, None]
        outputs.append((state * C_t).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * F.silu(z.double())
    return y, state


def make_inputs(batch, dim, n, groups, length, dtype, with_d, with_z, with_bias, seed=0):
    generator = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    inputs = {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length) * 0.5,
        "A": -torch.exp(randn(dim, n) * 0.5),
        "B": randn(batch, groups, n, length),
        "C": randn(batch, groups, n, length),
        "D": randn(dim) if with_d else None,
        "z": randn(batch, dim, length) if with_z else None,
        "delta_bias": randn(dim) * 0.3 if with_bias else None,
    }
    return {k: v.to(dtype).requires_grad_() if v is not None else None for k, v in inputs.items()}


def relative_error(actual, expected):
    """max |actual - expected| / max |expected| (elementwise ratios blow up near zeros)."""
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


@pytest.fixture
def implementation(request):
    scan.set_torch_implementation(request.param)
    yield request.param
    scan.set_torch_implementation("auto")


CASES = [
    # batch, dim, n, groups, length, D, z, delta_bias, softplus, last_state
    (2, 8, 16, 4, 37, True, True, True, True, True),
    (2, 8, 16, 4, 37, False, False, False, False, False),
    (1, 6, 4, 1, 50, True, False, True, True, False),
    (2, 4, 3, 1, 1, True, True, True, True, True),
    (3, 12, 5, 4, 23, False, True, True, False, True),
    (1, 4, 16, 4, 64, True, False, False, True, True),
]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, indirect=True)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}d{}n{}g{}l{}_D{:d}z{:d}bias{:d}sp{:d}last{:d}".format(*c))
def test_torch_backend_matches_reference(implementation, dtype, tolerance, case):
    batch, dim, n, groups, length, with_d, with_z, with_bias, softplus, last = case
    inputs = make_inputs(batch, dim, n, groups, length, dtype, with_d, with_z, with_bias, seed=length)
    result = selective_scan_fn(**inputs, delta_softplus=softplus, return_last_state=last, backend="torch")
    out, last_state = result if last else (result, None)
    assert out.dtype == dtype and out.shape == (batch, dim, length)
    reference_inputs = {k: v.detach().double().requires_grad_() if v is not None else None for k, v in inputs.items()}
    expected_out, expected_state = reference_scan(**reference_inputs, delta_softplus=softplus)
    assert relative_error(out, expected_out) <= tolerance
    if last:
        assert last_state.shape == (batch, dim, n)
        assert relative_error(last_state, expected_state) <= tolerance

    weights = torch.randn(expected_out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss = (out.double() * weights).sum()
    expected_loss = (expected_out * weights).sum()
    if last:
        loss = loss + last_state.double().sum()
        expected_loss = expected_loss + expected_state.sum()
    names = [k for k, v in inputs.items() if v is not None]
    grads = torch.autograd.grad(loss, [inputs[k] for k in names])
    expected_grads = torch.autograd.grad(expected_loss, [reference_inputs[k] for k in names])
    for name, grad, expected in zip(names, grads, expected_grads):
        assert grad.dtype == dtype and grad.shape == inputs[name].shape, name
        assert relative_error(grad, expected) <= tolerance, name


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, indirect=True)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-13), (torch.float32, 1e-6)], ids=["float64", "float32"])
def test_step_sizes_elementwise_over_the_whole_softplus_range(implementation, dtype, tolerance):
    """With l = 1, n = 1 and u = B = C = 1 the output is dt itself, so every step size and its
    derivative is checked to a few ulp, from dt ~ 1e-35 (delta = -80) past the threshold at 20."""
    delta = torch.linspace(-80, 40, 241, dtype=dtype).reshape(1, 241, 1).requires_grad_()
    ones = torch.ones(1, 1, 1, 1, dtype=dtype)
    out = selective_scan_fn(ones.view(1, 1, 1).expand(1, 241, 1), delta, -torch.ones(241, 1, dtype=dtype),
                            ones, ones, delta_softplus=True)
    (grad,) = torch.autograd.grad(out.sum(), [delta])
    expected = F.softplus(delta.detach().double())
    expected_grad = torch.sigmoid(delta.detach().double()).where(delta.detach() <= 20, torch.ones((), dtype=torch.float64))
    assert ((out.double() - expected).abs() / expected).max() <= tolerance
    assert ((grad.double() - expected_grad).abs() / expected_grad).max() <= tolerance


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, indirect=True)
def test_gradcheck(implementation):
    inputs = make_inputs(1, 2, 2, 1, 3, torch.float64, True, True, True)
    names = list(inputs)

    def scan_of(*tensors):
        return selective_scan_fn(*tensors, delta_softplus=True, return_last_state=True, backend="torch")

    assert torch.autograd.gradcheck(scan_of, tuple(inputs[k] for k in names))


@pytest.mark.parametrize("threads", [1, 3])
def test_kernel_splits_rows_across_threads(threads):
    """Concurrent row ranges that share a B/C group must not lose gradient contributions."""
    if not HAS_COMPILER:
        pytest.skip("no C++ compiler for the CPU kernel")
    previous = torch.get_num_threads()
    scan.set_torch_implementation("kernel")
    torch.set_num_threads(threads)
    try:
        inputs = make_inputs(2, 8, 4, 2, 19, torch.float64, True, False, True)
        out = selective_scan_fn(**inputs, delta_softplus=True)
        grads = torch.autograd.grad(out.square().sum(), [inputs["B"], inputs["C"], inputs["A"]])
    finally:
        torch.set_num_threads(previous)
        scan.set_torch_implementation("auto")
    reference_inputs = {k: v.detach().requires_grad_() if v is not None else None for k, v in inputs.items()}
    expected = reference_scan(**reference_inputs, delta_softplus=True)[0]
    expected_grads = torch.autograd.grad(expected.square().sum(), [reference_inputs[k] for k in ("B", "C", "A")])
    for grad, expected_grad in zip(grads, expected_grads):
        assert relative_error(grad, expected_grad) <= 1e-10


def test_chunked_channel_blocks(monkeypatch):
    """Force many channel blocks so the blocked path of the pure-PyTorch scan is exercised."""
    monkeypatch.setitem(scan._CHUNKED_BLOCK_ELEMENTS, "cpu", 64)
    scan.set_torch_implementation("chunked")
    try:
        inputs = make_inputs(2, 8, 4, 4, 11, torch.float64, True, True, True)
        out, state = selective_scan_fn(**inputs, delta_softplus=True, return_last_state=True)
        names = [k for k, v in inputs.items() if v is not None]
        grads = torch.autograd.grad(out.sum() + state.sum(), [inputs[k] for k in names])
    finally:
        scan.set_torch_implementation("auto")
    reference_inputs = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    expected, expected_state = reference_scan(**reference_inputs, delta_softplus=True)
    expected_grads = torch.autograd.grad(expected.sum() + expected_state.sum(), [reference_inputs[k] for k in names])
    assert relative_error(out, expected) <= 1e-10
    for name, grad, expected_grad in zip(names, grads, expected_grads):
        assert relative_error(grad, expected_grad) <= 1e-10, name


def test_low_precision_inputs_compute_in_float32():
    inputs = make_inputs(1, 4, 4, 2, 9, torch.bfloat16, True, True, True)
    out = selective_scan_fn(**inputs, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    as_float = {k: v.detach().float() for k, v in inputs.items()}
    expected = selective_scan_fn(**as_float, delta_softplus=True)
    assert torch.equal(out, expected.to(torch.bfloat16))
    out.float().sum().backward()
    assert inputs["B"].grad.dtype == torch.bfloat16


def test_kernel_source_compiles_without_warnings(tmp_path):
    """Every build variant, with its own flags plus -Werror: a warning fails the test."""
    if not HAS_COMPILER:
        pytest.skip("no C++ compiler for the CPU kernel")
    assert {"-Wall", "-Wextra"} <= set(scan._KERNEL_FLAGS)
    source = tmp_path / "selective_scan_cpu.cpp"
    source.write_text(scan._kernel_source())
    for flags, _ in scan._build_variants():
        command = [scan._compiler(), *flags, "-Werror", "-c", str(source), "-o", str(tmp_path / "kernel.o")]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"`{' '.join(command)}`:\n{result.stderr[-4000:]}"


def test_kernel_cache_key_follows_the_source(tmp_path, monkeypatch):
    if not HAS_COMPILER:
        pytest.skip("no C++ compiler for the CPU kernel")
    monkeypatch.setenv("SEGBENCH_CACHE_DIR", str(tmp_path))
    flags, libs = scan._build_variants()[-1]
    source = scan._kernel_source()
    built = [scan._build_library(text, scan._compiler(), "version", flags, libs) for text in (source, source + "// edited\n")]
    (library, error), (edited_library, edited_error) = built
    assert error is None and edited_error is None, error or edited_error
    assert library != edited_library and library.exists() and edited_library.exists()
    assert library.parent == tmp_path / "scan_kernel"
    assert scan._build_library(source, scan._compiler(), "version", flags, libs) == (library, None)


@pytest.mark.slow
def test_wheel_ships_the_kernel_source(project_copy, tmp_path):
    """A non-editable install builds the kernel from the .cpp in its own package data."""
    if not HAS_COMPILER:
        pytest.skip("no C++ compiler for the CPU kernel")
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--quiet"]

    def run_pip(*args):
        result = subprocess.run(pip + list(args), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"pip {' '.join(args)}:\n{result.stderr[-4000:]}"

    run_pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(project_copy))
    (wheel,) = wheels.glob("segbench-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "segbench/nn/csrc/selective_scan_cpu.cpp" in archive.namelist()
        shipped = archive.read("segbench/nn/csrc/selective_scan_cpu.cpp").decode()
    assert shipped == scan._kernel_source()
    run_pip("install", "--no-deps", "--target", str(site), str(wheel))
    code = "import json, segbench.nn.selective_scan as s; print(json.dumps([s.__file__, s.kernel_status()]))"
    env = dict(os.environ, PYTHONPATH=str(site), SEGBENCH_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    module_file, (available, detail) = json.loads(result.stdout)
    assert module_file.startswith(str(site)), module_file
    assert available, detail
    assert detail.startswith(str(tmp_path / "cache")), detail


def test_kernel_keeps_denormals():
    """The kernel is built without -ffast-math, whose startup code flushes denormals process-wide."""
    if not HAS_COMPILER:
        pytest.skip("no C++ compiler for the CPU kernel")
    available, detail = scan.kernel_status()
    assert available, detail
    assert (torch.tensor([1e-40]) * 1).item() != 0.0


def test_missing_compiler_falls_back_with_a_warning(tmp_path):
    code = (
        "import json, warnings, torch\n"
        "import segbench.nn.selective_scan as s\n"
        "u = torch.randn(1, 2, 5)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    s.selective_scan_fn(u, u, -torch.ones(2, 3), torch.randn(1, 1, 3, 5), torch.randn(1, 1, 3, 5))\n"
        "print(json.dumps([s.torch_implementation(u), s.kernel_status()[1], [str(w.message) for w in caught]]))\n"
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), SEGBENCH_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    implementation, status, messages = json.loads(result.stdout)
    assert implementation == "chunked"
    assert "no-such-compiler" in status
    assert any("chunked pure-PyTorch scan" in message for message in messages)


def test_missing_kernel_source_is_explained(project_copy):
    if not HAS_COMPILER:
        pytest.skip("no C++ compiler: the kernel source is never read")
    (project_copy / "segbench" / "nn" / "csrc" / "selective_scan_cpu.cpp").unlink()
    code = "import json, segbench.nn.selective_scan as s; print(json.dumps([s.__file__, s.kernel_status()]))"
    env = dict(os.environ, PYTHONPATH=str(project_copy), SEGBENCH_CACHE_DIR=str(project_copy / "cache"))
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=project_copy, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    module_file, (available, detail) = json.loads(result.stdout)
    assert module_file.startswith(str(project_copy)), module_file
    assert not available
    assert "segbench.nn/csrc/selective_scan_cpu.cpp cannot be read" in detail and "reinstall segbench" in detail


def test_kernel_request_without_kernel_is_an_error(tmp_path):
    code = (
        "import torch, segbench.nn.selective_scan as s\n"
        "s.set_torch_implementation('kernel')\n"
        "s.torch_implementation(torch.zeros(1))\n"
    )
    env = dict(os.environ, SEGBENCH_SCAN_KERNEL="0")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "RuntimeError" in result.stderr and "SEGBENCH_SCAN_KERNEL=0" in result.stderr


# -- backend selection -------------------------------------------------------------------------


@pytest.fixture
def restore_default_backend():
    previous = scan.get_default_backend()
    yield
    scan.set_default_backend(previous)


def test_auto_on_cpu_is_torch(restore_default_backend):
    scan.set_default_backend("auto")
    assert resolve_backend("auto", torch.zeros(1)) == "torch"
    assert resolve_backend("torch", torch.zeros(1)) == "torch"


def test_explicit_cuda_on_cpu_is_a_clear_error(restore_default_backend):
    inputs = make_inputs(1, 2, 2, 1, 4, torch.float32, True, False, False)
    expected = "mamba_ssm" if not scan.cuda_backend_available() else "CUDA tensors"
    with pytest.raises(RuntimeError, match=expected) as raised:
        selective_scan_fn(**inputs, backend="cuda")
    if not scan.cuda_backend_available():
        assert "pip install --no-build-isolation -e .[cuda]" in str(raised.value)
    scan.set_default_backend("cuda")
    with pytest.raises(RuntimeError, match=expected):
        selective_scan_fn(**inputs)


def test_unknown_backend_names_the_valid_ones(restore_default_backend):
    inputs = make_inputs(1, 2, 2, 1, 4, torch.float32, False, False, False)
    with pytest.raises(ValueError, match="auto, cuda, torch"):
        selective_scan_fn(**inputs, backend="triton")
    with pytest.raises(ValueError, match="auto, cuda, torch"):
        scan.set_default_backend("cpu")
    with pytest.raises(ValueError, match="auto, kernel, chunked"):
        scan.set_torch_implementation("fast")


def test_bad_shapes_are_explained():
    inputs = make_inputs(1, 6, 2, 1, 4, torch.float32, False, False, False)
    inputs["B"] = torch.randn(1, 4, 2, 4)
    with pytest.raises(ValueError, match=r"B must be \(b, g, n, l\).*divisible by g"):
        selective_scan_fn(**inputs)


# -- fvcore ------------------------------------------------------------------------------------


class TinyScan(torch.nn.Module):
    def __init__(self, dim, n, with_z):
        super().__init__()
        self.A_log = torch.nn.Parameter(torch.zeros(dim, n))
        self.D = torch.nn.Parameter(torch.ones(dim))
        self.delta_bias = torch.nn.Parameter(torch.zeros(dim))
        self.with_z = with_z

    def forward(self, u, delta, B, C):
        z = u if self.with_z else None
        return selective_scan_fn(u, delta, -self.A_log.exp(), B, C, self.D, z, self.delta_bias, True)


@pytest.mark.parametrize("with_z", [False, True])
def test_fvcore_counts_the_scan_through_the_handle(with_z):
    from fvcore.nn import FlopCountAnalysis

    batch, dim, n, groups, length = 2, 8, 4, 4, 10
    module = TinyScan(dim, n, with_z)
    inputs = (torch.randn(batch, dim, length), torch.randn(batch, dim, length),
              torch.randn(batch, groups, n, length), torch.randn(batch, groups, n, length))
    graph = torch.jit.trace(module, inputs).inlined_graph
    python_ops = [node for node in graph.nodes() if node.kind() == "prim::PythonOp"]
    assert [f"prim::PythonOp.{node.pyname()}" for node in python_ops] == [FVCORE_OP_NAME]

    analysis = FlopCountAnalysis(module, inputs).set_op_handle(FVCORE_OP_NAME, selective_scan_flop_jit)
    analysis.unsupported_ops_warnings(False)
    expected = 9 * batch * length * dim * n + batch * dim * length * (2 if with_z else 1)
    assert analysis.total() == expected
    assert expected == selective_scan_flops(batch, length, dim, n, with_d=True, with_z=with_z)


def test_flop_formula_is_vmambas():
    assert selective_scan_flops(1, 4096, 768, 16, with_d=False) == 9 * 4096 * 768 * 16
    assert selective_scan_flops(1, 4096, 768, 16) == 9 * 4096 * 768 * 16 + 4096 * 768


# -- cuda backend --------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and scan.cuda_backend_available()),
                    reason="needs a CUDA device and mamba_ssm's compiled kernel")
def test_cuda_backend_matches_torch_backend():
    inputs = make_inputs(2, 64, 16, 4, 300, torch.float32, True, True, True)
    results = {}
    for backend in ("cuda", "torch"):
        leaves = {k: v.detach().cuda().requires_grad_() for k, v in inputs.items()}
        out, state = selective_scan_fn(**leaves, delta_softplus=True, return_last_state=True, backend=backend)
        out.square().sum().backward()  # mamba_ssm's kernel does not backpropagate through last_state
        results[backend] = [out, state] + [leaves[k].grad for k in inputs]
    for name, cuda_value, torch_value in zip(["out", "last_state", *inputs], results["cuda"], results["torch"]):
        assert relative_error(cuda_value, torch_value) <= 1e-4, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_backend_on_gpu_matches_reference():
    """On a GPU without mamba_ssm the torch backend runs the chunked scan on the device."""
    inputs = make_inputs(2, 16, 16, 4, 300, torch.float32, True, True, True)
    leaves = {k: v.detach().cuda().requires_grad_() for k, v in inputs.items()}
    out, state = selective_scan_fn(**leaves, delta_softplus=True, return_last_state=True, backend="torch")
    (out.square().sum() + state.sum()).backward()
    reference_inputs = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    expected, expected_state = reference_scan(**reference_inputs, delta_softplus=True)
    (expected.square().sum() + expected_state.sum()).backward()
    assert relative_error(out.cpu(), expected) <= 1e-5
    assert relative_error(state.cpu(), expected_state) <= 1e-5
    for name in inputs:
        assert relative_error(leaves[name].grad.cpu(), reference_inputs[name].grad) <= 1e-5, name
