"""The OAR job script, rendered without submitting anything: needs no cluster (runs in the root phase too)."""

import sys

from oarfutures import OarPoolExecutor
from oarfutures.backends.base import BatchSubmission


def test_grid5000_example_parameters_render_the_expected_oar_lines(folder):
    executor = OarPoolExecutor(
        folder=folder,
        queue="production",
        walltime="0:2:0",
        nodes=1,
        gpus_per_node=1,
        additional_parameters={"t": "besteffort"},
    )
    try:
        submission = BatchSubmission(
            batch="b1", first=0, count=3, folder=executor.folder, python=sys.executable, max_running=None, options={}
        )
        script, arguments = executor.backend.render_script(submission)
    finally:
        executor.shutdown()
    lines = script.splitlines()
    for line in (
        "#OAR -l /nodes=1/gpu=1,walltime=0:02:00",
        "#OAR -q production",
        "#OAR -t besteffort",
        "#OAR --array 3",
    ):
        assert line in lines, script
    # one line of each, no default core count added next to the GPU
    assert [line for line in lines if line.startswith(("#OAR -l", "#OAR -q", "#OAR -t"))] == [
        "#OAR -l /nodes=1/gpu=1,walltime=0:02:00",
        "#OAR -q production",
        "#OAR -t besteffort",
    ]
    # the oarsub arguments say the same as the #OAR lines
    assert arguments[arguments.index("-l") + 1] == "/nodes=1/gpu=1,walltime=0:02:00"
    assert arguments[arguments.index("-q") + 1] == "production"
    assert arguments[arguments.index("-t") + 1] == "besteffort"
    assert lines[0] == "#!/bin/bash" and lines[-1].startswith("exec ")
