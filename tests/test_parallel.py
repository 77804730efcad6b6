"""Data parallelism: the same step on 1 device, 8 simulated devices, and 2 processes."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # end to end: `pytest -m 'not slow'` skips it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, devices):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "parallel_worker.py")]
                          + args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _result(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def single():
  return _result(_run([], 1))


def test_eight_devices_match_one(single):
  eight = _result(_run([], 8))
  assert single["devices"] == 1 and eight["devices"] == 8
  np.testing.assert_allclose(eight["losses"], single["losses"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(eight["params"], single["params"], rtol=1e-5, atol=1e-5)


def test_two_processes_match_one(single):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  address = f"127.0.0.1:{port}"
  procs = [_run([address, "2", str(i)], 2) for i in range(2)]
  outs = [_result(p) for p in procs]
  assert [o["devices"] for o in outs] == [4, 4]
  for o in outs:
    np.testing.assert_allclose(o["losses"], single["losses"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(o["params"], single["params"], rtol=1e-5, atol=1e-5)
