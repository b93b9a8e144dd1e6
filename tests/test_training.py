"""The process-wide settings a training run makes."""

import subprocess
import sys
import textwrap

import pytest


def test_kept_memory_spares_the_page_faults_of_each_step():
    # in a fresh process, so that this one keeps glibc's defaults
    script = textwrap.dedent("""
        import resource, torch
        from encsteal.augment import ColorJitter
        from encsteal.training import keep_freed_memory
        torch.manual_seed(0)
        images, jitter = torch.rand(256, 3, 32, 32), ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0)

        def faults_per_call():
            jitter(images)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(10):
                jitter(images)
            return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10

        print(faults_per_call(), keep_freed_memory(), faults_per_call())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    default, kept, after = float(out[0]), out[1], float(out[2])
    if kept == "False":
        pytest.skip("malloc is not glibc's here: keep_freed_memory changes nothing")
    assert kept == "True"
    # a 256-image batch is 3 MiB (768 pages): by default each call faults in its temporaries afresh
    assert default > 500 and after < default / 10
