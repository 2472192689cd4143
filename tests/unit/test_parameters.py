"""Parameters: one generic vocabulary, prefixed scheduler parameters, validation before anything is submitted.

Checked without a cluster and without running a call: the scripts are what sbatch/oarsub read. What the local
backend does with parameters when calls run is in tests/test_local.py, detection on the real machine in
tests/test_detection.py.
"""

import os
import re

import pytest

from oarfutures import AutoPoolExecutor, LocalPoolExecutor, OarPoolExecutor, SlurmPoolExecutor
from oarfutures.auto import detect_cluster
from oarfutures.backends.base import BatchSubmission


def slurm_script(folder, checkpointable=False, **parameters):
    backend = SlurmPoolExecutor(folder=folder, max_array_size=1001, **parameters).backend
    return backend.render_script(_submission(folder, 3, checkpointable), 0, 3)


def oar_script(folder, **parameters):
    return OarPoolExecutor(folder=folder, **parameters).backend.render_script(_submission(folder, 3))[0]


def _submission(folder, count, checkpointable=False, options=None):
    return BatchSubmission("b", 0, count, folder, "/usr/bin/python3", None, options or {}, checkpointable)


@pytest.mark.parametrize(
    "generic, slurm_line, oar_line",
    [
        ({"timeout_min": 5}, "#SBATCH --time=0-00:05:00", "walltime=0:05:00"),
        ({"walltime": "1:30:00"}, "#SBATCH --time=0-01:30:00", "walltime=1:30:00"),
        ({"nodes": 2}, "#SBATCH --nodes=2", "#OAR -l /nodes=2/core=1"),
        ({"cpus_per_task": 4}, "#SBATCH --cpus-per-task=4", "#OAR -l /nodes=1/core=4"),
        ({"tasks_per_node": 2, "cpus_per_task": 3}, "#SBATCH --ntasks-per-node=2", "#OAR -l /nodes=1/core=6"),
        ({"gpus_per_node": 1}, "#SBATCH --gpus-per-node=1", "#OAR -l /nodes=1/gpu=1"),
        ({"mem_gb": 2}, "#SBATCH --mem=2048M", "#OAR -p memnode >= 2048"),
        ({"name": "exp1"}, "#SBATCH --job-name=exp1", "#OAR -n exp1"),
        ({"setup": ["module load python"]}, "\nmodule load python\n", "\nmodule load python\n"),
    ],
)
def test_every_generic_parameter_maps_on_both_schedulers(folder, generic, slurm_line, oar_line):
    slurm = SlurmPoolExecutor(folder=folder, max_array_size=1001)
    slurm.update_parameters(**generic)
    oar = OarPoolExecutor(folder=folder)
    oar.update_parameters(**generic)
    assert slurm_line in slurm.backend.render_script(_submission(folder, 1), 0, 1)
    assert oar_line in oar.backend.render_script(_submission(folder, 1))[0]


def test_prefixed_parameters_apply_on_their_scheduler_and_override_the_generic_one(folder):
    slurm = AutoPoolExecutor(folder=folder, cluster="slurm", name="generic", slurm_name="special", oar_queue="ignored")
    assert slurm.backend.parameters["name"] == "special" and "queue" not in slurm.backend.parameters
    oar = AutoPoolExecutor(folder=folder, cluster="oar", oar_queue="besteffort", slurm_partition="ignored")
    assert oar.backend.parameters["queue"] == "besteffort" and "partition" not in oar.backend.parameters


def test_unknown_parameters_are_rejected_with_the_valid_ones(folder):
    with pytest.raises(TypeError, match=r"unknown SlurmPoolExecutor parameter 'partitoin'.*partition"):
        SlurmPoolExecutor(folder=folder).update_parameters(partitoin="cpu")
    with pytest.raises(TypeError, match=r"unknown OarPoolExecutor parameter 'queu'.*queue"):
        AutoPoolExecutor(folder=folder, cluster="oar", oar_queu="default")


@pytest.mark.parametrize(
    "executor, parameters, named",
    [
        (SlurmPoolExecutor, {"name": "a\n#SBATCH --uid=0"}, "name"),
        (SlurmPoolExecutor, {"partition": "cpu --qos=high"}, "partition"),
        (SlurmPoolExecutor, {"cpus_per_task": -2}, "cpus_per_task"),
        (SlurmPoolExecutor, {"walltime": "ten minutes"}, "walltime"),
        (SlurmPoolExecutor, {"additional_parameters": {"constraint": "v100\nrm -rf ~"}}, "additional_parameters"),
        (OarPoolExecutor, {"queue": "default\n#OAR -t besteffort"}, "queue"),
        (OarPoolExecutor, {"properties": "host='a'\nrm -rf ~"}, "properties"),
        (OarPoolExecutor, {"cores": 0}, "cores"),
        (OarPoolExecutor, {"setup": ["module load x\nrm -rf ~"]}, "setup"),
    ],
)
def test_values_that_would_escape_their_line_or_make_no_sense_are_rejected(folder, executor, parameters, named):
    with pytest.raises(ValueError, match=named):
        executor(folder=folder, **parameters)
    assert not os.path.exists(folder)  # checked before the folder is made: nothing written, nothing submitted


def test_options_reach_the_slurm_script(folder):
    executor = SlurmPoolExecutor(folder=folder, max_array_size=1001)
    options = executor.backend.validate({"cpus_per_task": 8, "slurm_partition": "long"})
    script = executor.backend.render_script(_submission(folder, 1, options=options), 0, 1)
    assert "#SBATCH --cpus-per-task=8" in script and "#SBATCH --partition=long" in script


def test_the_cluster_can_be_forced_by_argument_and_by_environment(folder, monkeypatch):
    assert isinstance(AutoPoolExecutor(folder=folder, cluster="local"), LocalPoolExecutor)
    monkeypatch.setenv("OARFUTURES_CLUSTER", "local")
    assert isinstance(AutoPoolExecutor(folder=folder), LocalPoolExecutor)
    monkeypatch.setenv("OARFUTURES_CLUSTER", "pbs")
    with pytest.raises(ValueError, match="pbs"):
        AutoPoolExecutor(folder=folder)


def test_detection_falls_back_to_local_without_schedulers(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_cluster() == "local"


def test_checkpointable_batches_ask_for_the_signal_and_requeue(folder):
    slurm = slurm_script(folder, checkpointable=True, checkpoint_seconds=120)
    assert "#SBATCH --signal=B:USR2@120" in slurm and "#SBATCH --requeue" in slurm
    oar = OarPoolExecutor(folder=folder, checkpoint_seconds=120).backend.render_script(_submission(folder, 1, True))[0]
    assert re.search(r"#OAR -t idempotent\n#OAR --checkpoint 120\n#OAR --signal 12", oar)


# ---------------------------------------------------------------------------------------------- submitit's spellings
@pytest.mark.parametrize(
    "executor, parameters, line",
    [
        (SlurmPoolExecutor, {"job_name": "exp1"}, "#SBATCH --job-name=exp1\n"),
        (SlurmPoolExecutor, {"time": 90}, "#SBATCH --time=0-01:30:00\n"),
        (SlurmPoolExecutor, {"ntasks_per_node": 2}, "#SBATCH --ntasks-per-node=2\n"),
        (SlurmPoolExecutor, {"num_gpus": 2}, "#SBATCH --gpus-per-node=2\n"),
        (SlurmPoolExecutor, {"constraint": "v100&ib"}, "#SBATCH --constraint=v100&ib\n"),
        (SlurmPoolExecutor, {"gres": "gpu:2", "exclusive": True}, "#SBATCH --gres=gpu:2\n#SBATCH --exclusive\n"),
        (SlurmPoolExecutor, {"mail_type": "END", "mail_user": "a@b.fr"}, "#SBATCH --mail-type=END\n"),
        (SlurmPoolExecutor, {"mem_gb": 2}, "#SBATCH --mem=2048M\n"),
        (SlurmPoolExecutor, {"stderr_to_stdout": False, "exclude": ""}, "#SBATCH --nodes=1\n"),  # the defaults: nothing
        (OarPoolExecutor, {"gpu": 1, "n": "exp1"}, "#OAR -l /nodes=1/gpu=1\n"),
        (OarPoolExecutor, {"mem_gb": 2}, "#OAR -p memnode >= 2048\n"),
    ],
)
def test_submitit_spellings_with_the_same_meaning_are_accepted(folder, executor, parameters, line):
    script = slurm_script(folder, **parameters) if executor is SlurmPoolExecutor else oar_script(folder, **parameters)
    assert line in script


def test_auto_takes_submitit_prefixed_spellings_on_their_scheduler_only(folder):
    slurm = AutoPoolExecutor(folder=folder, cluster="slurm", slurm_constraint="v100", slurm_job_name="x", oar_gpu=1)
    assert (slurm.backend.parameters["constraint"], slurm.backend.parameters["name"]) == ("v100", "x")
    assert slurm.backend.parameters["gpus_per_node"] is None
    with AutoPoolExecutor(folder=folder, cluster="local", mem_gb=1, slurm_gres="gpu:1", oar_gpu=1) as local:
        assert local.backend.parameters == {"mem_gb": 1}


@pytest.mark.parametrize(
    "cluster, parameters, message",
    [
        ("slurm", {"slurm_array_parallelism": 4}, "array_parallelism.*use max_workers="),
        ("oar", {"slurm_array_parallelism": 4}, "array_parallelism.*use max_workers="),
        ("slurm", {"stderr_to_stdout": True}, "stderr_to_stdout=True is not supported.*logs"),
        ("slurm", {"slurm_max_num_timeout": 5}, "use max_resubmissions="),
        ("slurm", {"name": "a", "job_name": "b"}, "job_name is submitit's spelling of name"),
    ],
)
def test_submitit_spellings_oarfutures_does_not_take_are_refused_naming_its_own(folder, cluster, parameters, message):
    with pytest.raises(TypeError, match=message):
        AutoPoolExecutor(folder=folder, cluster=cluster, **parameters)


@pytest.mark.parametrize("cluster", ["slurm", "local"])
def test_a_typo_in_a_parameter_for_the_other_scheduler_is_refused(folder, cluster):
    with pytest.raises(
        TypeError, match=r"unknown OarPoolExecutor parameter 'queu' in 'oar_queu'; valid ones are:.*queue"
    ):
        AutoPoolExecutor(folder=folder, cluster=cluster, oar_queu="default")
    with pytest.raises(TypeError, match="unknown SlurmPoolExecutor parameter 'partitoin' in 'slurm_partitoin'"):
        AutoPoolExecutor(folder=folder, cluster="oar" if cluster == "slurm" else cluster, slurm_partitoin="cpu")


@pytest.mark.parametrize(
    "executor, typo, valid",
    [
        (SlurmPoolExecutor, "partitoin", "partition"),
        (OarPoolExecutor, "queu", "queue"),
        (LocalPoolExecutor, "mem", "mem_gb"),
    ],
)
def test_a_constructor_typo_lists_the_valid_names(folder, executor, typo, valid):
    with pytest.raises(TypeError, match=f"unknown {executor.__name__} parameter '{typo}'; valid ones are: .*{valid}"):
        executor(folder=folder, **{typo: "x"})


@pytest.mark.parametrize(
    "make",
    [
        lambda: SlurmPoolExecutor(partition="a b"),
        lambda: OarPoolExecutor(oar_queu="default"),
        lambda: LocalPoolExecutor(result_grace=-1),
        lambda: LocalPoolExecutor(python="/no/such/python"),
        lambda: AutoPoolExecutor(cluster="local", slurm_partitoin="cpu"),
        lambda: AutoPoolExecutor(cluster="slurm", mem_gb=-1),
    ],
    ids=["slurm-value", "oar-other-prefix", "local-grace", "local-python", "auto-typo", "auto-value"],
)
def test_an_invalid_argument_at_construction_leaves_no_folder_behind(tmp_path, monkeypatch, make):
    monkeypatch.setenv("OARFUTURES_FOLDER", str(tmp_path / "default"))
    with pytest.raises((TypeError, ValueError)):
        make()
    assert not os.path.exists(tmp_path / "default")
